"""A 200 MB request body against the gateway's body limit (issue 11's target: a 413 in under 50 ms, RSS
unchanged), with the length announced (``content-length``) and without it (chunked: the gateway reads up to
the limit, then refuses). A raw socket sends the head and then the body as fast as it can; the clock runs from
the end of the head to the first byte of the answer. RSS is the gateway's, from /proc, before and after.

    python bench/body_limit.py
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_overhead import spawn, wait_http  # noqa: E402

SIZE = 200 * 1024 * 1024
PORT = 18995


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def send(chunked: bool) -> tuple[float, str]:
    """Milliseconds from the end of the head to the answer's first line, and that line."""
    sock = socket.create_connection(("127.0.0.1", PORT))
    framing = b"transfer-encoding: chunked\r\n" if chunked else b"content-length: %d\r\n" % SIZE
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + framing
        + b"\r\n"
    )
    start = time.perf_counter()
    block = b"x" * (1 << 20)

    def body() -> None:
        try:
            for _ in range(SIZE // len(block)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
        except OSError:
            pass  # the gateway answered and closed: the rest is not wanted

    threading.Thread(target=body, daemon=True).start()
    first = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    took = (time.perf_counter() - start) * 1000
    sock.close()
    return took, first


def main() -> None:
    d = Path(tempfile.mkdtemp())
    (d / "m.yaml").write_text(
        yaml.safe_dump(
            {"name": "m", "backend": {"kind": "remote", "endpoints": [{"url": "http://127.0.0.1:1"}]}}
        )
    )
    gw = spawn([sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d), "--port", str(PORT),
                "--log-level", "warning"], "0")  # fmt: skip
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{PORT}/health")
        for chunked in (False, True):
            before = rss(gw.pid)
            took, status = send(chunked)
            time.sleep(0.5)  # let the connection's buffers go before reading RSS again
            after = rss(gw.pid)
            what = "chunked (no length)" if chunked else "content-length: 200 MB"
            target = "413 < 50 ms, RSS unchanged" if not chunked else "413, RSS bounded by the limit"
            rows.append(
                (
                    f"200 MB body, {what}",
                    f"{status} in {took:.1f} ms",
                    f"{(after - before) / 2**20:+.1f} MiB",
                    target,
                )
            )
    finally:
        gw.terminate()
    print_table(("measure", "answer", "gateway RSS change", "target"), rows)


if __name__ == "__main__":
    main()
