"""Gateway CPU per streamed token: Anthropic's Messages API (translated, and passed through to an engine
that speaks it) and OpenAI's Responses API (translated) against chat completions (passed through), on the
same upstream, side by side.

A fake upstream (``tests/fake_upstream.py``, two ``remote`` models: ``m`` speaks chat completions only,
``native`` declares ``native_apis: [messages]``) streams 2,000 chat chunks (or Messages events) a request; the
gateway runs as ``llm-gateway serve`` in its own process, and its CPU time (user + system, from /proc) is read
around 20 sequential streams of each API, alternating, 3 rounds. Target (issue 17): translated streaming
costs at most 10% more gateway CPU per token than chat completions.

    python bench/messages_overhead.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import FakeUpstream, RunningUpstream  # noqa: E402

CHUNKS = 2000
STREAMS = 20
ROUNDS = 3
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def stream_chat(http: httpx.Client) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        return sum(1 for line in r.iter_lines() if line.startswith("data: {"))


def stream_messages(http: httpx.Client) -> int:
    body = {"model": "m", "max_tokens": 4096, "messages": [{"role": "user", "content": "x"}], "stream": True}
    with http.stream("POST", "/v1/messages", json=body) as r:
        return sum(1 for line in r.iter_lines() if line == "event: content_block_delta")


def stream_native(http: httpx.Client) -> int:
    body = {"model": "native", "max_tokens": 4096, "messages": [{"role": "user", "content": "x"}],
            "stream": True}  # fmt: skip
    with http.stream("POST", "/v1/messages", json=body) as r:
        return sum(1 for line in r.iter_lines() if line == "event: content_block_delta")


def stream_responses(http: httpx.Client) -> int:
    body = {"model": "m", "input": "x", "stream": True, "store": False}
    with http.stream("POST", "/v1/responses", json=body) as r:
        return sum(1 for line in r.iter_lines() if line == "event: response.output_text.delta")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, RunningUpstream(FakeUpstream(chunks=CHUNKS), 18995) as up:
        for name, apis in (("m", []), ("native", ["messages"])):
            backend = {"kind": "remote", "endpoints": [{"url": up.url}], "native_apis": apis}
            manifest = {"name": name, "health_check_interval": 0, "backend": backend}
            (Path(tmp) / f"{name}.yaml").write_text(yaml.safe_dump(manifest))
        port = 18996
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--manifests", tmp, "--port", str(port),
             "--log-level", "warning"], cwd=ROOT,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                for _ in range(100):
                    try:
                        http.get("/health")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                ways = {
                    "chat completions": stream_chat,
                    "messages (translated)": stream_messages,
                    "messages (passed through)": stream_native,
                    "responses (translated)": stream_responses,
                }
                per_token: dict[str, list[float]] = {name: [] for name in ways}
                for way in ways.values():
                    way(http)  # warm up
                for i in range(ROUNDS):
                    for name in list(ways)[i % len(ways) :] + list(ways)[: i % len(ways)]:
                        before = cpu_seconds(gw.pid)
                        tokens = sum(ways[name](http) for _ in range(STREAMS))
                        assert tokens == STREAMS * CHUNKS, (name, tokens)
                        per_token[name].append((cpu_seconds(gw.pid) - before) / tokens * 1e6)
        finally:
            gw.terminate()
            gw.wait(30)
    base = statistics.median(per_token["chat completions"])
    rows = [
        [n, f"{statistics.median(v):.1f}", f"{statistics.median(v) / base:.2f}x"]
        for n, v in per_token.items()
    ]
    print(f"{STREAMS} streams x {CHUNKS} tokens per round, {ROUNDS} rounds (medians); gateway CPU per token")
    print_table(["API", "gateway CPU us/token", "x chat"], rows)


if __name__ == "__main__":
    main()
