"""Failover: from kill -9 of the fleet's leader to the first load served by the new leader.

A 3-member etcd on loopback, three gateways in cluster mode (real processes), the podman engines of
tests/engine/start.sh, and container models running the real llama-server (a synthetic model in the test
image, as tests/test_fleet.py). Each round: model "a" loaded through a follower; kill -9 of the leader; at
once a follower asks for model "b" (not loaded) until it answers. Reported: the time until another gateway
is named leader, and until "b" answered (the new leader loaded it for the follower), for two lease TTLs.

    python bench/failover.py [--rounds N]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import httpx
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.llama_server.build import built_binary  # noqa: E402
from tests.conftest import write_manifests  # noqa: E402
from tests.etcd_cluster import EtcdCluster  # noqa: E402
from tests.fleet_harness import Fleet  # noqa: E402
from tests.synthetic_gguf import write_model  # noqa: E402

IMAGE = "localhost/llm-gateway-llamacpp:test"
ENGINES = {name: f"unix:///tmp/llm-gateway-engines/{name}.sock" for name in ("e1", "e2")}


def host_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))
        return str(s.getsockname()[0])


def manifest(name: str, model: Path, bin_dir: Path) -> dict[str, object]:
    backend = {
        "kind": "container", "preset": "llamacpp", "image": IMAGE, "pull": "never", "model": str(model),
        "volumes": ["/usr:/usr:ro", f"{bin_dir}:/app:ro"], "n_ctx": 512, "threads": 1,
        "load_timeout": 120, "stop_timeout": 2, "engines": ["e1"],
    }  # fmt: skip
    return {"name": name, "backend": backend, "memory": "50MiB"}


def ask(url: str, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    try:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    except httpx.HTTPError:
        return False


def one_round(
    etcd: EtcdCluster, ttl: float, work: Path, bin_dir: Path, models: dict[str, Path]
) -> tuple[float, float]:
    ip = host_ip()
    engines = [{"name": n, "url": u, "address": ip, "publish_ip": ip} for n, u in ENGINES.items()]
    fleet = Fleet(etcd.endpoints, work / "manifests", work / "gateways", engines, ttl=ttl)
    write_manifests(fleet.manifests, [manifest(n, models[n], bin_dir) for n in ("a", "b")])
    try:
        for name in ("g1", "g2", "g3"):
            fleet.start(name)
        leader = fleet.leader()
        followers = [g for g in fleet.gateways if g is not leader]
        assert ask(followers[0].url, "a")
        killed = time.monotonic()
        leader.kill()
        served: list[float] = []

        def load_b() -> None:  # asked at once: it waits (bounded) for the new leader to load it
            while not served and time.monotonic() - killed < 120:
                if ask(followers[1].url, "b"):
                    served.append(time.monotonic() - killed)

        asker = threading.Thread(target=load_b)
        asker.start()
        elected = None
        while elected is None and time.monotonic() - killed < 120:
            if any(g.cluster().get("leader") not in (None, leader.name) for g in followers):
                elected = time.monotonic() - killed
            time.sleep(0.05)
        asker.join(150)
        assert elected is not None and served, "no new leader, or b was never served"
        return elected, served[0]
    finally:
        fleet.stop()
        for url in ENGINES.values():
            client = docker.DockerClient(base_url=url, timeout=60)
            label = f"llm-gateway.instance={fleet.label}"
            for c in client.containers.list(all=True, sparse=True, filters={"label": label}):
                c.remove(force=True)
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = built_binary("llama-server")
    assert server is not None, "llm-gateway build-llama-server"
    work = Path(tempfile.mkdtemp(prefix="failover-"))
    models = {n: write_model(work / f"{n}.gguf", seed=i) for i, n in enumerate("ab")}
    etcd = EtcdCluster().start()
    rows = []
    try:
        for ttl in (10.0, 3.0):
            runs = [
                one_round(etcd, ttl, work / f"r{ttl:g}-{i}", server.parent, models)
                for i in range(args.rounds)
            ]
            rows.append(
                [
                    f"{ttl:g} s",
                    f"{statistics.median(r[0] for r in runs):.1f}",
                    f"{statistics.median(r[1] for r in runs):.1f}",
                    ", ".join(f"{r[1]:.1f}" for r in runs),
                ]
            )
    finally:
        etcd.close()
    print(f"kill -9 of the leader; {args.rounds} rounds per TTL (medians, seconds)")
    print_table(["lease TTL", "new leader named", "first load served by it", "each round"], rows)


if __name__ == "__main__":
    main()
