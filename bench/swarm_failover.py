"""A swarm node's death: how long until its models serve again from another node (issue 21), and its parts.

A real two-node swarm on this machine (``tests/swarm_cluster.py``: two dockerd on 127.0.0.1 and 127.0.0.2).
The gateway runs as its own process with one ``swarm`` engine (the manager, node a). Models (SmolLM2 in the
llama.cpp test image, one-task services):

- ``anchor`` on node a only, so that node b has more room and ``victim`` is placed there;
- ``victim``, one replica, any node: it lands on b, and must be placed again on a when b dies;
- ``pair``, two replicas spread over a and b: it serves on from a, and its lost replica is placed again.

Each round SIGKILLs node b's dockerd and containerd, then measures from that instant:

- Swarm's node-down delay: the manager's node state polled every 50 ms until ``down``;
- out of rotation: the gateway's ``/admin/models`` polled every 50 ms until victim is no longer ready;
- serving again: a client asks victim for one token in a loop (each request waits for the load, as any
  request for a model being loaded does) until one answers;
- victim's load time on node a, as the gateway measured it (service created, task running, /health 200);
- the gateway's own part: serving again less the node-down delay less that load time (the watch's period,
  the unload and decision, the client's request);
- pair: its lost replica placed again and healthy (the model served from a all along).

Then node b's dockerd is started again (it rejoins), the leftovers are removed by the gateway and Swarm, and
victim and pair are unloaded so that the next round places them as before.

    python bench/swarm_failover.py [--rounds N]

Needs root, Debian's docker.io (dockerd), and `llm-gateway build-llama-server`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script
from proxy_overhead import wait_http

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.llama_server.build import built_binary  # noqa: E402
from tests.swarm_cluster import IMAGE, Swarm, free_port  # noqa: E402

MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
POLL = 0.05


def manifest(name: str, engines: list[str], replicas: int = 1) -> dict[str, Any]:
    server = built_binary("llama-server")
    assert server is not None, "run `llm-gateway build-llama-server`"
    backend = {
        "kind": "container",
        "preset": "llamacpp",
        "engines": engines,
        "replicas": replicas,
        "image": IMAGE,
        "pull": "never",
        "model": str(MODEL),
        "volumes": ["/usr:/usr:ro", f"{server.parent}:/app:ro"],
        "n_ctx": 2048,
        "threads": 1,
        "stop_timeout": 2,
    }
    return {"name": name, "backend": backend, "memory": "300MiB", "health_check_interval": "1s"}


def start_gateway(swarm: Swarm, port: int) -> subprocess.Popen[bytes]:
    d = Path(tempfile.mkdtemp())
    (d / "manifests").mkdir()
    models = [manifest("anchor", ["swarm.a"]), manifest("victim", ["swarm"]), manifest("pair", ["swarm"], 2)]
    for m in models:
        (d / "manifests" / f"{m['name']}.yaml").write_text(yaml.safe_dump(m))
    engine = {"name": "swarm", "kind": "swarm", "url": swarm.manager.url, "watch_interval": 0.2}
    (d / "engines.yaml").write_text(yaml.safe_dump([engine]))
    command = [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d / "manifests")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_INSTANCE_ID": f"bench-{uuid.uuid4().hex[:6]}"}
    level = os.environ.get("SWARM_BENCH_LOG_LEVEL", "warning")  # and SWARM_BENCH_LOG: where its log goes
    proc = subprocess.Popen(
        [*command, "--engines", str(d / "engines.yaml"), "--port", str(port), "--log-level", level],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("SWARM_BENCH_LOG", os.devnull), "ab"),  # noqa: SIM115
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def ask(http: httpx.Client, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    try:
        return http.post("/v1/chat/completions", json=body, timeout=120).status_code == 200
    except httpx.HTTPError:
        return False


def model(http: httpx.Client, name: str) -> dict[str, Any]:
    return dict(http.get(f"/admin/models/{name}", timeout=30).json())


def until(predicate: Any, deadline: float = 120.0) -> float:
    """Poll ``predicate`` every 50 ms; the monotonic time it first held."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        time.sleep(POLL)
    raise TimeoutError("no change within the deadline")


def one_round(swarm: Swarm, http: httpx.Client) -> dict[str, float]:
    for name in ("anchor", "victim", "pair"):
        assert ask(http, name), f"{name} does not serve"
    engines = [r["engine"] for r in model(http, "victim")["replicas"]]
    assert engines == ["swarm.b"], f"victim was placed on {engines}, not swarm.b"
    found: dict[str, float] = {}

    def swarm_down() -> None:
        found["down"] = until(lambda: swarm.node_state("b") == "down")

    def out_of_rotation() -> None:
        found["out"] = until(lambda: model(http, "victim")["state"] != "ready")

    def pair_repaired() -> None:
        found["pair"] = until(
            lambda: (
                [(r["engine"], r["healthy"]) for r in model(http, "pair")["replicas"]]
                == [("swarm.a", True)] * 2
            )
        )

    loads = model(http, "victim")["loads"]

    def serving() -> None:
        with httpx.Client(base_url=str(http.base_url)) as own:
            found["serving"] = until(lambda: ask(own, "victim") and model(own, "victim")["loads"] > loads)

    watchers = [threading.Thread(target=f) for f in (swarm_down, out_of_rotation, serving, pair_repaired)]
    killed = time.monotonic()
    swarm.worker.kill()
    for w in watchers:
        w.start()
    for w in watchers:
        w.join()
    load = float(model(http, "victim")["load_seconds"])
    down = found["down"] - killed
    row = {
        "down": down,
        "out": found["out"] - found["down"],
        "load": load,
        "serving": found["serving"] - killed,
        "gateway": found["serving"] - killed - down - load,
        "pair": found["pair"] - found["down"],
    }
    # back as before: node b rejoins, its leftovers go, victim and pair are placed over both nodes again
    swarm.worker.start()
    until(lambda: swarm.node_state("b") == "ready")
    with contextlib.closing(swarm.worker.client()) as b:
        until(lambda: not b.containers.list(all=True, sparse=True, filters={"label": "llm-gateway.role"}))
    for name in ("victim", "pair"):
        http.post(f"/admin/models/{name}/unload", timeout=60)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    swarm = Swarm(Path(f"/tmp/llmgw-bench-swarm-{uuid.uuid4().hex[:6]}")).start()
    port = free_port()
    gw = start_gateway(swarm, port)
    rows: list[dict[str, float]] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for i in range(args.rounds):
                rows.append(one_round(swarm, http))
                print(
                    f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in rows[-1].items()), flush=True
                )
    finally:
        gw.terminate()
        gw.wait(60)
        swarm.close()

    def cell(key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print_table(
        ("part, seconds", f"median (min-max) of {len(rows)}", "target"),
        [
            ("Swarm's node-down delay (kill to manager reports Down)", cell("down"), "Swarm's own"),
            ("gateway: Down reported to victim out of rotation", cell("out"), "<= 1 (its part)"),
            ("victim's load on node a (service, task, /health)", cell("load"), "the model's own"),
            ("kill to victim serving again from node a", cell("serving"), "down + load + <= 1"),
            ("gateway's own part (serving - down - load)", cell("gateway"), "<= 1"),
            (
                "pair: Down reported to its lost replica healthy on a",
                cell("pair"),
                "(served from a meanwhile)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
