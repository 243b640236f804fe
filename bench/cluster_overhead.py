"""A follower in cluster mode against a gateway alone, side by side in one run: the proxy's req/s and p99.

Both serve the same fake upstream (``tests/fake_upstream.py``) as a ``remote`` model; the follower routes
to it from the fleet's table (a 3-member etcd on loopback, a leader beside it). wrk, 16 connections,
non-streaming chat; the gateway measured on core 0, the upstream and wrk on core 1 (the leader and etcd
idle beside them). Rounds alternate between the two, so that noise from the machine falls on both.
Target: the follower at >= 0.97x the alone gateway's req/s, with the same p99.

    python bench/cluster_overhead.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _table import print_table  # bench/, on the path when run as a script
from proxy_overhead import remote_gateway, spawn, wait_http, wrk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.etcd_cluster import EtcdCluster  # noqa: E402

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    etcd = EtcdCluster().start()
    upstream_port = free_port()
    upstream = spawn([sys.executable, "tests/fake_upstream.py", "--port", str(upstream_port)], "1")
    procs = [upstream]
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}/v1/models")
        url = f"http://127.0.0.1:{upstream_port}"
        cluster = {
            "GATEWAY_CLUSTER_ETCD": etcd.endpoints,
            "GATEWAY_CLUSTER_NAME": f"bench{os.getpid()}",
            "GATEWAY_STATE_FILE": str(Path(tempfile.mkdtemp()) / "pins.json"),
        }
        alone_port, leader_port, follower_port = free_port(), free_port(), free_port()
        procs.append(remote_gateway(url, 1000, alone_port))
        procs.append(
            remote_gateway(url, 1000, leader_port, env={**cluster, "GATEWAY_CLUSTER_MEMBER": "lead"})
        )
        wait_role(leader_port, "leader")
        procs.append(remote_gateway(url, 1000, follower_port, env={**cluster, "GATEWAY_CLUSTER_MEMBER": "f"}))
        wait_role(follower_port, "follower")
        for port in (alone_port, follower_port):  # loaded (the follower: mirrored) before measuring
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY, timeout=60)
            r.raise_for_status()
        for port in (alone_port, follower_port):  # warm-up: a fresh gateway's first seconds run slower
            wrk(f"http://127.0.0.1:{port}/v1/chat/completions", BODY, 16, 3)
        results: dict[str, list[tuple[float, float, float]]] = {"alone": [], "follower": []}
        for _ in range(args.rounds):
            for name, port in (("alone", alone_port), ("follower", follower_port)):
                results[name].append(
                    wrk(f"http://127.0.0.1:{port}/v1/chat/completions", BODY, 16, args.seconds)
                )
        rows = []
        base = statistics.median(r[0] for r in results["alone"])
        for name, runs in results.items():
            rps = statistics.median(r[0] for r in runs)
            rows.append(
                [
                    name,
                    f"{rps:,.0f}",
                    f"{rps / base:.2f}x",
                    f"{statistics.median(r[1] for r in runs):.2f}",
                    f"{statistics.median(r[2] for r in runs):.2f}",
                ]
            )
        print(f"wrk, 16 connections, {args.seconds}s x {args.rounds} rounds each (medians)")
        print_table(["gateway", "req/s", "vs alone", "p50 ms", "p99 ms"], rows)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        etcd.close()


def wait_role(port: int, role: str) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if httpx.get(f"http://127.0.0.1:{port}/admin/cluster", timeout=5).json().get("role") == role:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway on {port} is not the {role}")


if __name__ == "__main__":
    main()
