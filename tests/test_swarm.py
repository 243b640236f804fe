"""The ``swarm`` engine, for real: two ``dockerd`` on 127.0.0.1 and 127.0.0.2 form a swarm
(``tests.swarm_cluster``), the gateway talks to its manager, and llama.cpp's server runs as one-task services
pinned to the nodes the placement chose, driven with the official openai SDK. The manager also listens on
TCP with TLS (client certificates verified), for the TLS tests.

One swarm serves the whole module; the tests run in order, and the last one kills the manager.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from backends.docker.engine import LABEL_INSTANCE, LABEL_MODEL, LABEL_ROLE, LABEL_RUN
from backends.llama_server.build import built_binary
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest, wait_for
from tests.swarm_cluster import IMAGE, Swarm, tls_material

NODE_DOWN_DEADLINE = 90.0  # Swarm reports a dead node after ~10 s; this only bounds a hang


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    tls = tls_material(tmp_path_factory.mktemp("tls"))
    cluster = Swarm(Path(f"/tmp/llmgw-swarm-{uuid.uuid4().hex[:8]}"), tls=tls)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()
    assert cluster.leftovers() == [], "the swarm's cleanup left these behind"


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    server = built_binary("llama-server")
    assert server is not None, "run `llm-gateway build-llama-server` (README's test command does)"
    return server.parent


@dataclass
class Site:
    start: Callable[..., RunningGateway]
    swarm: Swarm
    bin_dir: Path
    instance: str = field(default_factory=lambda: f"swarm-{uuid.uuid4().hex[:8]}")

    def engine(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "swarm",
            "kind": "swarm",
            "url": self.swarm.manager.url,
            "watch_interval": 0.2,
            **extra,
        }

    def llamacpp(self, name: str, memory: str = "300MiB", **backend: Any) -> dict[str, Any]:
        spec = {
            "kind": "container",
            "preset": "llamacpp",
            "engines": ["swarm"],
            "image": IMAGE,
            "pull": "never",
            "model": str(SMOLLM2),
            "volumes": ["/usr:/usr:ro", f"{self.bin_dir}:/app:ro"],
            "n_ctx": 2048,
            "threads": 1,
            "load_timeout": 120,
            "stop_timeout": 2,
            **backend,
        }
        return {"name": name, "backend": spec, "memory": memory, "health_check_interval": "1s"}

    def serve(
        self, manifests: list[dict[str, Any]], engines: list[dict[str, Any]] | None = None
    ) -> RunningGateway:
        return self.start(manifests, engines=engines or [self.engine()], instance_id=self.instance)

    def services(self, **labels: str) -> list[Any]:
        filters = [f"{LABEL_INSTANCE}={self.instance}", *(f"llm-gateway.{k}={v}" for k, v in labels.items())]
        with contextlib.closing(self.swarm.manager.client()) as m:
            return list(m.services.list(filters={"label": filters}))

    def containers(self, node: str) -> list[Any]:
        """This instance's containers on node ``node``'s own engine (running or not)."""
        engine = self.swarm.manager if node == "a" else self.swarm.worker
        with contextlib.closing(engine.client(timeout=10)) as client:
            found = client.containers.list(
                all=True, sparse=True, filters={"label": f"{LABEL_INSTANCE}={self.instance}"}
            )
            return list(found)


@pytest.fixture
def site(serve: Callable[..., RunningGateway], swarm: Swarm, bin_dir: Path) -> Site:
    return Site(serve, swarm, bin_dir)


def ask(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    return r.choices[0].message.content or ""


def replicas(gw: RunningGateway, model: str) -> list[dict[str, Any]]:
    return list(gw.model_state(model)["replicas"])


def test_replicas_spread_over_both_nodes_as_pinned_labelled_services(site: Site) -> None:
    gw = site.serve([site.llamacpp("spread", replicas=2)])
    assert ask(gw.client(), "spread") is not None
    placed = replicas(gw, "spread")
    assert sorted(r["engine"] for r in placed) == ["swarm.a", "swarm.b"]
    by_engine = {r["engine"]: r for r in placed}
    assert by_engine["swarm.a"]["url"].startswith("http://127.0.0.1:")
    assert by_engine["swarm.b"]["url"].startswith("http://127.0.0.2:")
    assert all(r["healthy"] and r["restarts"] == 0 for r in placed)
    services = site.services(model="spread")
    assert len(services) == 2
    nodes = {site.swarm.nodes[h]: h for h in ("a", "b")}
    pinned = set()
    for service in services:
        spec = service.attrs["Spec"]
        labels = spec["Labels"]
        assert labels[LABEL_MODEL] == "spread" and labels[LABEL_ROLE] == "server" and labels[LABEL_RUN]
        assert spec["TaskTemplate"]["ContainerSpec"]["Labels"] == labels
        (constraint,) = spec["TaskTemplate"]["Placement"]["Constraints"]
        node_id = constraint.removeprefix("node.id==")
        assert labels["llm-gateway.node"] == f"swarm.{nodes[node_id]}"
        (task,) = [t for t in service.tasks() if t["Status"]["State"] == "running"]
        assert task["NodeID"] == node_id
        pinned.add(nodes[node_id])
    assert pinned == {"a", "b"}
    # each node's own engine runs its container
    assert len(site.containers("a")) == 1 and len(site.containers("b")) == 1


def _stream(client: openai.OpenAI, model: str, tokens: int, out: dict[str, Any]) -> None:
    """A streamed chat of ``tokens`` tokens; ``out`` gets the pieces it received, or the error."""
    pieces: list[str] = []
    out["pieces"] = pieces
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to a thousand."}],
            max_tokens=tokens,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        with stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason:
                    out["finish"] = chunk.choices[0].finish_reason
    except Exception as exc:
        out["error"] = exc


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.2", port)) == 0


def busy_engines(gw: RunningGateway, model: str) -> list[str]:
    return sorted(r["engine"] for r in replicas(gw, model) if r["outstanding"])


def test_a_node_lost_mid_stream_and_back(site: Site) -> None:
    gw = site.serve(
        [
            site.llamacpp("spread", replicas=2, parallel=1),
            site.llamacpp("other", engines=["swarm.a"]),
            site.llamacpp("later", engines=["swarm.b"]),
        ]
    )
    client = gw.client(timeout=300)
    ask(client, "other")
    other = {s.id for s in site.services(model="other")}
    scheduler = gw.gateway.scheduler

    # a stream on each replica: the first goes where the balancer sends it, the second to the other one
    streams: dict[str, dict[str, Any]] = {}
    threads = []
    for _ in range(2):
        out: dict[str, Any] = {}
        before = busy_engines(gw, "spread")
        thread = threading.Thread(target=_stream, args=(client, "spread", 600, out))
        thread.start()
        threads.append(thread)
        wait_for(lambda: len(busy_engines(gw, "spread")) > len(streams), "a stream")
        (engine,) = set(busy_engines(gw, "spread")) - set(before)
        streams[engine] = out
    wait_for(lambda: len(streams["swarm.a"]["pieces"]) > 0, "tokens from node a")

    killed = time.monotonic()
    site.swarm.worker.kill()
    lost = wait_for(
        lambda: [r for r in replicas(gw, "spread") if r["reason"] == "its host is down"],
        "the lost replica out of rotation",
        NODE_DOWN_DEADLINE,
    )
    out_after = time.monotonic() - killed
    assert [r["engine"] for r in lost] == ["swarm.b"]
    assert site.swarm.node_state("b") != "ready"  # Swarm's own word: the gateway only reads it
    assert scheduler.budgets["swarm.b:ram"] == 0 and scheduler.used()["swarm.b:ram"] == 0
    devices = {d["device"]: d for d in gw.admin()["devices"]}
    assert devices["swarm.b:ram"]["host_down"] and not devices["swarm.a:ram"]["host_down"]
    # the model serves on from the node left, and its lost replica is placed again there
    assert ask(client, "spread") is not None
    wait_for(
        lambda: [(r["engine"], r["healthy"]) for r in replicas(gw, "spread")] == [("swarm.a", True)] * 2,
        "the lost replica placed again on node a",
        NODE_DOWN_DEADLINE,
    )
    assert {s.attrs["Spec"]["Labels"]["llm-gateway.node"] for s in site.services(model="spread")} == {
        "swarm.a"
    }
    for thread in threads:
        thread.join(120)
    kept = streams["swarm.a"]
    assert "error" not in kept and kept["finish"] == "length", kept.get("error")
    assert len("".join(kept["pieces"])) > 0
    # the other model was not touched
    assert {s.id for s in site.services(model="other")} == other and gw.model_state("other")["loads"] == 1
    print(f"lost replica out of rotation {out_after:.1f}s after the node's dockerd was killed")

    # the node comes back: what the gateway had there is removed, and the node is used again
    site.swarm.worker.start()
    wait_for(lambda: site.swarm.node_state("b") == "ready", "node b ready again", NODE_DOWN_DEADLINE)
    wait_for(lambda: site.containers("b") == [], "the lost replica's container removed", NODE_DOWN_DEADLINE)
    port = int(lost[0]["url"].rsplit(":", 1)[1])
    wait_for(lambda: not listening(port), "the lost replica's server gone", NODE_DOWN_DEADLINE)
    wait_for(lambda: scheduler.budgets["swarm.b:ram"] > 0, "node b's budget back")
    assert ask(client, "later") is not None
    assert [r["engine"] for r in replicas(gw, "later")] == ["swarm.b"]


def test_a_task_swarm_restarts_by_itself_is_shown(site: Site) -> None:
    gw = site.serve([site.llamacpp("crashy", engines=["swarm.a"])])
    client = gw.client(timeout=120)
    ask(client, "crashy")
    (victim,) = site.containers("a")
    with contextlib.closing(site.swarm.manager.client()) as engine:
        engine.containers.get(victim.id).kill()  # SIGKILL: exit code 137, and Swarm starts a new task

    def restarted() -> Any:
        (replica,) = replicas(gw, "crashy")
        return replica["restarts"] == 1 and replica

    replica = wait_for(restarted, "the restart shown", NODE_DOWN_DEADLINE)
    assert "exit code 137" in replica["last_exit"]

    def served() -> bool:
        try:
            ask(client, "crashy")
        except openai.APIError:
            return False
        return True

    wait_for(served, "the restarted task serving", NODE_DOWN_DEADLINE)
    assert gw.model_state("crashy")["loads"] == 1  # Swarm restarted it: the gateway did not reload it


def tls_engine(site: Site, name: str, client: str, **extra: Any) -> dict[str, Any]:
    tls = site.swarm.tls
    assert tls is not None
    return {
        "name": name,
        "url": site.swarm.tls_url,
        "tls": {
            "ca_cert": str(tls / "ca.pem"),
            "client_cert": str(tls / f"{client}.pem"),
            "client_key": str(tls / f"{client}-key.pem"),
        },
        **extra,
    }


def test_a_tls_engine_serves_and_a_refused_client_certificate_is_a_clear_503(site: Site) -> None:
    engines = [
        tls_engine(site, "swarm", "client", kind="swarm", watch_interval=0.2),
        tls_engine(site, "rogue", "rogue", memory="2GiB"),
    ]
    gw = site.serve(
        [site.llamacpp("secure", engines=["swarm.b"]), site.llamacpp("refused", engines=["rogue"])], engines
    )
    client = gw.client(timeout=120)
    assert ask(client, "secure") is not None
    assert [r["engine"] for r in replicas(gw, "secure")] == ["swarm.b"]
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client, "refused")
    assert refused.value.status_code == 503
    assert int(refused.value.response.headers["retry-after"]) >= 1
    message = str(refused.value.message)
    assert "'rogue'" in message and "TLS" in message, message


def test_the_manager_down_is_a_503_naming_it_and_other_kinds_serve(
    site: Site, model_files: dict[str, Path]
) -> None:
    gw = site.serve([site.llamacpp("unborn", engines=["swarm.a"]), llama_manifest("local", model_files["a"])])
    client = gw.client(timeout=120)
    site.swarm.manager.kill()
    with pytest.raises(openai.APIStatusError) as down:
        ask(client, "unborn")
    assert down.value.status_code == 503
    assert int(down.value.response.headers["retry-after"]) >= 1
    assert "'swarm'" in str(down.value.message), down.value.message
    assert ask(client, "local") is not None
