"""A tiny OpenAI-shaped upstream for fault injection and for measuring the gateway's own overhead.

It is never the proof that a feature works with a real engine (the llama-server tests are); it injects what a
real engine does rarely: 500s, slow first bytes, connections reset mid-stream, a failing health endpoint, and
hangs: no response head at all (``no_head``), a head and then nothing (``head_only``), a stream that stops
after two chunks (``stall``). A hung request is held until the client drops the connection (``dropped``
counts them), so a gateway that never gives up on it would hold it forever.
Behaviour is chosen per instance (``mode`` for requests, ``health_status`` for ``/health`` and
``/v1/models``) and can be changed while it runs. Run alone for benchmarks:

    python tests/fake_upstream.py --port 9000 [--chunks 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections import deque
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CHAT_OBJECT = {
    "id": "chatcmpl-fake",
    "object": "chat.completion",
    "created": 0,
    "model": "fake",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
CHAT = json.dumps(CHAT_OBJECT).encode()


def _chunk(i: int) -> bytes:
    return b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":"fake",' + (
        b'"choices":[{"index":0,"delta":{"content":"t%d"},"finish_reason":null}]}\n\n' % i
    )


def _message_event(i: int) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"t%d"}}\n\n' % i
    )


MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_fake","type":"message",'
    b'"role":"assistant","model":"fake","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
MESSAGE_END = (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":%d}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

RECENT = 1024  # requests remembered for the tests' checks
TIMINGS = b'"timings":{"cache_n":0,"prompt_n":1,"prompt_ms":1.0,"predicted_n":%d,"predicted_ms":1.0}'
FINISH_EVENT = (
    b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],'
    b'"object":"chat.completion.chunk"}\n\n'
)
TIMINGS_EVENT = FINISH_EVENT.replace(b"}\n\n", b"," + TIMINGS + b"}\n\n")
USAGE_EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":64,"total_tokens":65}}\n\n'
)


class FakeUpstream:
    def __init__(
        self, mode: str = "ok", chunks: int = 8, chunk_delay: float = 0.0, timings: bool = False
    ) -> None:
        self.mode = mode  # ok | error500 | reset | slow_first | no_head | head_only | stall
        self.dropped = 0  # hung requests whose client closed the connection
        self.health_status = 200
        self.probes = 0  # health requests, counted apart from ``requests``
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.timings = timings  # end a stream as llama.cpp's server does: a last chunk with its ``timings``
        self.requests = 0
        # The last requests' models, and per stream whether it asked for the usage event: bounded, as the
        # bench runs this upstream for minutes at thousands of requests a second.
        self.models: deque[str] = deque(maxlen=RECENT)
        self.asked_usage: deque[bool] = deque(maxlen=RECENT)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] in ("/health", "/v1/models"):
            self.probes += 1
            await self._send(send, self.health_status, b'{"object":"list","data":[]}')
            return
        self.requests += 1
        request = json.loads(body or b"{}")
        self.models.append(request.get("model", ""))
        if self.mode == "error500":
            await self._send(send, 500, b'{"error":{"message":"injected failure","type":"server_error"}}')
            return
        if self.mode == "slow_first":
            await asyncio.sleep(0.3)
        if self.mode in ("no_head", "head_only"):
            if self.mode == "head_only":
                kind = b"text/event-stream" if request.get("stream") else b"application/json"
                await send(
                    {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
                )
            await self._hang(receive)
            return
        if not request.get("stream"):
            await self._send(send, 200, CHAT)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        messages = scope["path"] == "/v1/messages"  # Anthropic's events (an engine that speaks it)
        if messages:
            await send({"type": "http.response.body", "body": MESSAGE_START, "more_body": True})
        for i in range(self.chunks):
            if self.mode == "reset" and i == 2:
                raise ConnectionResetError("injected reset mid-stream")  # uvicorn drops the connection
            if self.mode == "stall" and i == 2:
                await self._hang(receive)
                return
            piece = _message_event(i) if messages else _chunk(i)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        if messages:
            await send({"type": "http.response.body", "body": MESSAGE_END % self.chunks, "more_body": False})
            return
        asked = bool((request.get("stream_options") or {}).get("include_usage"))
        self.asked_usage.append(asked)
        if self.timings:  # as llama.cpp's server: the timings go on the last event, the usage one when asked
            finish = TIMINGS_EVENT % self.chunks
            await send(
                {"type": "http.response.body", "body": FINISH_EVENT if asked else finish, "more_body": True}
            )
            if asked:
                usage = USAGE_EVENT.replace(b"}}\n\n", b"}," + TIMINGS % self.chunks + b"}\n\n")
                await send({"type": "http.response.body", "body": usage, "more_body": True})
        elif asked:
            await send({"type": "http.response.body", "body": USAGE_EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _hang(self, receive: Any) -> None:
        """Send nothing more until the client closes the connection."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.dropped += 1

    @staticmethod
    async def _send(send: Any, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RunningUpstream:
    def __init__(self, app: FakeUpstream, port: int) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> RunningUpstream:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def tiny_json_app() -> Starlette:
    """A conventional small JSON service (Starlette, parses the body, answers with JSONResponse): the kind of
    upstream ``../shared/ENVIRONMENT.md`` measured at ~5,000 req/s on one core. Non-streaming chat only."""

    async def chat(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse(CHAT_OBJECT)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--starlette", action="store_true", help="serve tiny_json_app() instead")
    p.add_argument("--timings", action="store_true", help="end streams with llama.cpp's timings")
    a = p.parse_args()
    uvicorn.run(
        tiny_json_app()
        if a.starlette
        else FakeUpstream(chunks=a.chunks, chunk_delay=a.chunk_delay, timings=a.timings),
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
