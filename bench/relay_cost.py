"""What the metrics add to one streamed response, in process: the relay loop, the trace and its record.

    python bench/relay_cost.py [--streams 200] [--rounds 40]

The gateway's relay (``gateway.http.relay.relay``) runs a stream of 64 content chunks, as the fake upstream
sends them, into a ``send`` that does nothing. With metrics on, each stream also gets its ``Trace`` and
``Metrics.finished`` (the batch's ``flush`` every 64 requests, as in the gateway). Variants alternate in
blocks of ``--streams``; the table gives each one's microseconds per stream (median and least of
``--rounds`` blocks) and what it adds to metrics off:

- ``usage asked``: an upstream that gives its usage only when asked (OpenAI's servers, vLLM): the gateway
  asked on the client's behalf, and takes the usage event out again;
- ``no usage at all``: an upstream that gives none (the relay loop, reading the end, the record without
  token counts), and the same without ``Metrics.finished``;
- ``llama.cpp timings``: an upstream that ends its streams with llama.cpp's ``timings`` (llama-server), read
  for the usage unasked;
- ``timings, no record``: the same without ``Metrics.finished`` (what the relay loop alone adds).

Left out, the same with metrics on or off: the sockets and HTTP around each piece, about 20 us a piece in
the gateway (``proxy_overhead.py --metrics-only`` measures the whole). Per-request code runs cold in the
gateway (once per request, between other requests' work), so there it costs more than in this loop.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import print_table  # bench/, on the path when run as a script

from backends.base import UpstreamResponse
from gateway.http.relay import relay
from gateway.observability.metrics import Metrics, Trace
from tests.fake_upstream import TIMINGS_EVENT, USAGE_EVENT, _chunk

CHUNKS = [_chunk(i) for i in range(64)]
DONE = b"data: [DONE]\n\n"
PLAIN = [*CHUNKS, DONE]
ASKED = [*CHUNKS, USAGE_EVENT, DONE]
TIMED = [*CHUNKS, TIMINGS_EVENT % 64, DONE]

Run = Callable[[int, Metrics], Awaitable[None]]


async def _body(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _send(message: object) -> None:
    return None


def _response(pieces: list[bytes]) -> UpstreamResponse:
    finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    finished.set_result(True)
    return UpstreamResponse(200, {"content-type": "text/event-stream"}, _body(pieces), lambda: None, finished)


def _off(pieces: list[bytes]) -> Run:
    async def run(n: int, metrics: Metrics) -> None:
        for _ in range(n):
            await relay(_response(pieces), _send, None, False)

    return run


def _on(pieces: list[bytes], strip: bool, record: bool = True) -> Run:
    async def run(n: int, metrics: Metrics) -> None:
        clock = time.perf_counter
        for _ in range(n):
            trace = Trace("m", "chat/completions", clock())
            trace.scheduled, trace.engine = clock(), "0"
            await relay(_response(pieces), _send, trace, strip)
            trace.status = 200
            if record:
                metrics.finished(trace, clock())

    return run


VARIANTS: dict[str, Run] = {
    "metrics off": _off(PLAIN),
    "usage asked": _on(ASKED, strip=True),
    "no usage at all": _on(PLAIN, strip=False),
    "no usage, no record": _on(PLAIN, strip=False, record=False),
    "llama.cpp timings": _on(TIMED, strip=False),
    "timings, no record": _on(TIMED, strip=False, record=False),
}


async def measure(streams: int, rounds: int) -> dict[str, list[float]]:
    metrics = Metrics(["m"])
    per: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for run in VARIANTS.values():  # warm-up
        await run(streams, metrics)
    names = list(VARIANTS)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            await VARIANTS[name](streams, metrics)
            per[name].append((time.perf_counter() - start) / streams * 1e6)
    return per


def main() -> None:
    args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=False))
    unknown = set(args) - {"--streams", "--rounds"}
    if unknown or len(sys.argv[1:]) % 2:
        sys.exit(f"{__doc__}\nunknown: {' '.join(sys.argv[1:])}")
    per = asyncio.run(measure(int(args.get("--streams", 200)), int(args.get("--rounds", 40))))
    base = median(per["metrics off"])
    rows = []
    for name, v in per.items():
        added = "" if name == "metrics off" else f"{median(v) - base:+.1f}"
        rows.append((name, f"{median(v):.1f}", f"{min(v):.1f}", added))
    print_table(("stream of 64 chunks", "us/stream (median)", "us/stream (least)", "added"), rows)


if __name__ == "__main__":
    main()
