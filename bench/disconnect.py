"""How many tokens llama-server still generates after a streaming client has gone: directly, and through the
gateway, against the same llama-server in the same run.

The gateway runs SmolLM2 as a ``llama_server`` model (one slot). Each round, a client asks for a long
stream (up to 400 tokens, end of text banned), reads ``--read`` content events, and closes its socket. Once
the slot is idle, llama-server's own line for the request (``stop processing: n_tokens = N``, from the
replica's log through ``GET /admin/models/{name}/logs``) says how many tokens its slot held: N minus the
prompt's tokens is what it generated, and minus the events the client read, what was generated for nobody
(events already on their way when the client closed count too, so this is an upper bound). Direct and
gateway rounds alternate. Target (issue 11): the slot is free within 2 tokens.

    python bench/disconnect.py [--rounds 10] [--read 8]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
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
MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PORT = 18971
STOP = re.compile(r"stop processing: n_tokens = (\d+)")
MESSAGES = [{"role": "user", "content": "Write a very long story about the sea."}]


def wait(predicate: object, what: str, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if predicate():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # poll interval
    raise RuntimeError(f"timed out waiting for {what}")


def stream_and_leave(port: int, read: int) -> float:
    """Ask for a long stream, read ``read`` content events, close; seconds from the request to the close."""
    body = json.dumps(
        {
            "model": "smol",
            "messages": MESSAGES,
            "max_tokens": 400,
            "stream": True,
            "logit_bias": {"2": -100},  # SmolLM2's end of text: the stream cannot end on its own
        }
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        start = time.perf_counter()
        sock.sendall(request)
        seen, pending = 0, b""
        while seen < read:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the stream ended before the client left")
            *events, pending = (pending + data).split(b"\n\n")
            seen += sum(1 for e in events if b'"content":"' in e)
        return time.perf_counter() - start


def last_stop(admin: str) -> tuple[str, int]:
    """The newest "stop processing" line in the replica's log (it starts with a timestamp, so each is
    unique) and the tokens in the slot then (prompt plus generated); ("", -1) when there is none yet."""
    lines = httpx.get(f"{admin}/logs", timeout=10).json()["replicas"][0]["log"]
    for line in reversed(lines):
        if m := STOP.search(line):
            return line, int(m.group(1))
    return "", -1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--read", type=int, default=8)
    a = p.parse_args()
    d = Path(tempfile.mkdtemp())
    backend = {"kind": "llama_server", "model": str(MODEL), "n_ctx": 2048, "parallel": 1, "threads": 2}
    (d / "smol.yaml").write_text(yaml.safe_dump({"name": "smol", "backend": backend}))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d), "--port", str(PORT),
         "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{PORT}"
    admin = f"{base}/admin/models/smol"
    after: dict[str, list[int]] = {"direct": [], "gateway": []}
    try:
        wait(lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200, "the gateway")
        state = httpx.post(f"{admin}/load", timeout=120).json()
        url = state["replicas"][0]["url"]
        ports = {"direct": int(url.rsplit(":", 1)[1]), "gateway": PORT}
        probe = {"model": "smol", "messages": MESSAGES, "max_tokens": 1}
        answer = httpx.post(f"{url}/v1/chat/completions", json=probe, timeout=60).json()
        prompt = answer["usage"]["prompt_tokens"]
        for i in range(a.rounds * 2):
            mode = ("direct", "gateway")[(i + i // 2) % 2]  # direct, gateway, gateway, direct, ...
            before, _ = last_stop(admin)
            stream_and_leave(ports[mode], a.read)
            wait(
                lambda: not any(s["is_processing"] for s in httpx.get(f"{url}/slots", timeout=5).json()),
                "the slot to be idle",
            )
            wait(lambda b=before: last_stop(admin)[0] != b, "the request's stop line")
            after[mode].append(last_stop(admin)[1] - prompt - a.read)
    finally:
        gateway.terminate()
        gateway.wait(60)
    rows = [
        (
            f"{mode}: tokens generated after the client left (read {a.read}, {len(v)} rounds)",
            f"{statistics.median(v):.0f}",
            f"{max(v)}",
            "<= 2",
        )
        for mode, v in after.items()
    ]
    print_table(("measure", "median", "worst", "target"), rows)


if __name__ == "__main__":
    main()
