"""Cluster mode, for real: a 3-member etcd cluster on loopback, the two podman engines of
tests/engine/start.sh, and gateways in cluster mode as real processes (so kill -9 is real), driven over
sockets with the official openai SDK. A container model runs the real llama-server in the test image
(tests/test_containers.py's manifests); only containers labelled with the test's own fleet are counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.docker.engine import LABEL_INSTANCE, LABEL_MODEL
from tests.conftest import EOS, ROOT, free_port, wait_for, write_manifests
from tests.etcd_cluster import EtcdCluster
from tests.fake_upstream import FakeUpstream, RunningUpstream
from tests.fleet_harness import Fleet, GatewayProcess
from tests.test_containers import (  # noqa: F401 (fixtures)
    IMAGE,
    Site,
    bin_dir,
    clients,
    count,
    engine_urls,
    host_ip,
)

MiB = 2**20
LONG = 1500  # tokens: a stream that runs for a while on the synthetic model


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture
def site(
    engine_urls: dict[str, str],  # noqa: F811
    clients: dict[str, Any],  # noqa: F811
    bin_dir: Path,  # noqa: F811
    host_ip: str,  # noqa: F811
    model_files: dict[str, Path],
) -> Site:
    return Site(_no_serve, engine_urls, clients, bin_dir, host_ip, model_files)


def _no_serve(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the fleet's gateways are processes: tests.fleet_harness")


@pytest.fixture
def fleet(etcd: EtcdCluster, site: Site, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(etcd.endpoints, tmp_path / "manifests", tmp_path / "gateways", site.engines(e1="150MiB"))
    yield f
    f.stop()
    for c in site.clients.values():  # what a test left (it failed half way): only this fleet's
        for container in c.containers.list(
            all=True, sparse=True, filters={"label": f"llm-gateway.instance={f.label}"}
        ):
            container.remove(force=True)


def ours(site: Site, fleet: Fleet, **labels: str) -> dict[str, int]:
    return count(site.ours(fleet.label, **labels))


def chat(gw: GatewayProcess, model: str, stream: bool = False) -> str:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=180) as client:
        messages: Any = [{"role": "user", "content": "x"}]
        if stream:
            parts = client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
        return r.choices[0].message.content or ""


def three(fleet: Fleet) -> list[GatewayProcess]:
    gws = [fleet.start(n) for n in ("g1", "g2", "g3")]
    fleet.leader()
    return gws


def test_members_join_and_a_container_model_asked_through_every_gateway_at_once_loads_once(
    fleet: Fleet, site: Site
) -> None:
    write_manifests(fleet.manifests, [site.llamacpp("m", site.models["a"], memory="100MiB", engines=["e1"])])
    gws = three(fleet)
    ids = ["g1", "g2", "g3"]
    for g in gws:  # each sees the others from its next turn on
        wait_for(lambda g=g: sorted(m["id"] for m in g.cluster()["members"]) == ids, f"{g.name}'s members")
    view = gws[0].cluster()
    assert view["manifests_agree"] and view["store"]["connected"]
    assert ours(site, fleet) == {"e1": 0, "e2": 0}  # lazy: nothing runs before a request

    answers: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda g=g, i=i: answers.__setitem__(f"{g.name}{i}", _try(chat, g, "m")))
        for g in gws
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(isinstance(a, str) for a in answers.values()), answers
    assert len(answers) == 6
    assert ours(site, fleet, model="m", role="server") == {"e1": 1, "e2": 0}
    # every gateway routes to the one container, straight to its address
    urls = {g.name: [r["url"] for r in g.model("m")["replicas"]] for g in gws}
    assert len({tuple(u) for u in urls.values()}) == 1, urls

    # Metrics: each gateway its own request series, labelled with its name; the engine's own gauges (read
    # from llama-server's /metrics) once for the fleet, from the leader alone.
    leader = fleet.leader()
    for g in gws:
        text = httpx.get(f"{g.url}/metrics", timeout=30).text
        assert f'vllm:e2e_request_latency_seconds_count{{gateway="{g.name}",model_name="m"' in text
        if g is not leader:
            assert "vllm:kv_cache_usage_perc{" not in text
    wait_for(
        lambda: "vllm:kv_cache_usage_perc{" in httpx.get(f"{leader.url}/metrics", timeout=30).text,
        "the leader's scrape of the engine",
    )

    # `llm-gateway ps` on any gateway lists the fleet's members
    ps = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ps"],
        env={**os.environ, "GATEWAY_URL": gws[1].url},
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert all(g.name in ps.stdout for g in gws) and "leader" in ps.stdout, ps.stdout


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def audit(site: Site, fleet: Fleet) -> None:
    """The engines' own listing: e1's budget (150 MiB) holds one 100 MiB model at a time."""
    running = site.ours(fleet.label, role="server")
    assert len(running["e1"]) <= 1, [c.attrs["Names"] for c in running["e1"]]


def test_loads_evictions_and_pins_through_different_gateways_never_exceed_a_budget(
    fleet: Fleet, site: Site
) -> None:
    write_manifests(
        fleet.manifests,
        [site.llamacpp(n, site.models[n], memory="100MiB", engines=["e1"]) for n in ("a", "b")],
    )
    g1, g2, g3 = three(fleet)
    assert chat(g1, "a")
    audit(site, fleet)
    assert chat(g2, "b")  # evicts a, whoever asks
    audit(site, fleet)
    assert ours(site, fleet, model="a")["e1"] == 0 and ours(site, fleet, model="b")["e1"] == 1
    assert chat(g3, "a")
    audit(site, fleet)
    # A pin through one gateway holds on the others: b cannot evict a any more, through any gateway.
    assert httpx.post(f"{g3.url}/admin/models/a/pin", timeout=120).status_code == 200
    for g in (g1, g2):
        wait_for(lambda g=g: g.model("a")["pinned"], f"the pin seen by {g.name}")
    refused = httpx.post(
        f"{g1.url}/v1/chat/completions",
        json={"model": "b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        timeout=120,
    )
    assert refused.status_code == 503 and "retry-after" in refused.headers, refused.text
    audit(site, fleet)
    assert ours(site, fleet, model="a")["e1"] == 1
    devices = {d["device"]: d for d in g3.get("/admin/devices")["devices"]}
    leader = fleet.leader()
    ledger = {d["device"]: d for d in leader.get("/admin/devices")["devices"]}
    assert ledger["e1:ram"]["used_bytes"] == 100 * MiB <= ledger["e1:ram"]["budget_bytes"]
    assert devices  # every gateway answers with its view


def test_a_reload_through_one_gateway_reloads_them_all(fleet: Fleet, site: Site) -> None:
    write_manifests(fleet.manifests, [site.llamacpp("a", site.models["a"], memory="100MiB", engines=["e1"])])
    g1, g2, g3 = three(fleet)
    write_manifests(fleet.manifests, [site.llamacpp("b", site.models["b"], memory="100MiB", engines=["e1"])])
    assert httpx.post(f"{g2.url}/admin/reload", timeout=60).json()["added"] == ["b"]
    for g in (g1, g3):
        wait_for(lambda g=g: "b" in {m["name"] for m in g.get("/admin/models")["models"]}, f"{g.name} reload")
    # each publishes its new digest on its next turn: then they agree again
    wait_for(lambda: all(g.cluster()["manifests_agree"] for g in (g1, g2, g3)), "the digests to agree")
    # A gateway that joins with other manifests is reported, loudly, by every gateway.
    odd = write_manifests(
        fleet.manifests.parent / "odd", [site.llamacpp("a", site.models["a"], engines=["e1"])]
    )
    fleet.start("odd", manifests=odd)
    wait_for(lambda: not any(g.cluster()["manifests_agree"] for g in (g1, g2, g3)), "the mismatch reported")
    wait_for(lambda: "DIFFERENT manifests" in g1.log.read_text(), "the mismatch in the log")


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_the_leader_going_away_under_streaming_load_loses_no_request(
    fleet: Fleet, site: Site, how: str
) -> None:
    """kill -9: the lease expires and another gateway adopts what runs. SIGTERM: the leader hands over (it
    leaves the containers running and revokes its lease) instead of unloading under the followers."""
    write_manifests(
        fleet.manifests,
        [site.llamacpp(n, site.models[n], memory="50MiB", engines=["e1"]) for n in ("a", "b")],
    )
    gws = three(fleet)
    leader = fleet.leader()
    followers = [g for g in gws if g is not leader]
    assert chat(followers[0], "a", stream=True)
    # What the new leader finds on the engine besides: a container of this fleet that no model claims (its
    # model was removed while the leader was away), and one of another fleet.
    e1 = site.clients["e1"]
    unclaimed = e1.containers.create(
        IMAGE, ["--version"], labels={LABEL_INSTANCE: fleet.label, LABEL_MODEL: "x"}
    )
    foreign = e1.containers.create(
        IMAGE, ["--version"], labels={LABEL_INSTANCE: "fleet-another", LABEL_MODEL: "a"}
    )
    before = site.ours(fleet.label, model="a", role="server")["e1"]
    assert len(before) == 1
    started = before[0].attrs.get("StartedAt") or before[0].attrs.get("Created")

    failures: list[BaseException] = []
    served = [0]
    stop = threading.Event()

    def load(g: GatewayProcess) -> None:
        while not stop.is_set():
            try:
                assert chat(g, "a", stream=True)
                served[0] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=load, args=(g,)) for g in followers for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: served[0] >= 4, "streams before the kill", deadline=120)
        if how == "kill -9":
            leader.kill()
        else:
            leader.proc.send_signal(signal.SIGTERM)
            assert leader.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
        new = fleet.leader()
        assert new is not leader and new in followers
        mark = served[0]
        wait_for(lambda: served[0] >= mark + 4, "streams after the failover", deadline=120)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert failures == []
    after = site.ours(fleet.label, model="a", role="server")["e1"]
    assert [c.id for c in after] == [c.id for c in before]  # adopted, not restarted or duplicated
    assert (after[0].attrs.get("StartedAt") or after[0].attrs.get("Created")) == started
    assert new.model("a")["state"] == "ready"
    wait_for(
        lambda: not e1.containers.list(all=True, sparse=True, filters={"id": unclaimed.id}),
        "the unclaimed one removed",
    )
    foreign.reload()  # never touched: not this fleet's
    foreign.remove(force=True)
    # A model asked for after the failover loads once, through the new leader, from a follower.
    other = next(g for g in followers if g is not new)
    assert chat(other, "b")
    assert ours(site, fleet, model="b", role="server") == {"e1": 1, "e2": 0}
    ledger = {d["device"]: d for d in new.get("/admin/devices")["devices"]}
    assert ledger["e1:ram"]["used_bytes"] == 100 * MiB  # the ledger rebuilt from what runs: a and b
    # The killed gateway comes back as a follower.
    back = fleet.start(leader.name)
    assert back.cluster()["role"] == "follower"
    assert fleet.leader() is new


@pytest.fixture
def upstream() -> Iterator[RunningUpstream]:
    with RunningUpstream(FakeUpstream(), free_port()) as running:
        yield running


def remote(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "backend": {"kind": "remote", "endpoints": [{"url": url}]}}


def test_etcd_leader_loss_and_etcd_down(
    etcd: EtcdCluster, site: Site, tmp_path: Path, upstream: RunningUpstream
) -> None:
    fleet = Fleet(etcd.endpoints, tmp_path / "manifests", tmp_path / "gateways", [])
    write_manifests(fleet.manifests, [remote(f"r{i}", upstream.url) for i in (1, 2, 3)])
    try:
        g1, g2 = fleet.start("g1"), fleet.start("g2")
        fleet.leader()
        for g in (g1, g2):
            assert chat(g, "r1")
        failures: list[BaseException] = []
        served = [0]
        stop = threading.Event()

        def load(g: GatewayProcess) -> None:
            while not stop.is_set():
                try:
                    chat(g, "r1", stream=True)
                    served[0] += 1
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=load, args=(g,)) for g in (g1, g2)]
        for t in threads:
            t.start()
        try:
            etcd_leader = etcd.leader()
            etcd.kill(etcd_leader)
            assert chat(g2, "r2")  # a load through a follower, at once: the store moves to another member
            mark = served[0]
            wait_for(lambda: served[0] >= mark + 20, "requests after the etcd leader's loss")
            wait_for(lambda: all(g.cluster()["store"]["connected"] for g in (g1, g2)), "the store again")
            etcd.restart(etcd_leader)
            down = etcd.stop_all()
            wait_for(lambda: not any(g.cluster()["store"]["connected"] for g in (g1, g2)), "the store down")
            mark = served[0]
            wait_for(lambda: served[0] >= mark + 20, "requests with the store down")
            for g in (g1, g2):
                refused = httpx.post(
                    f"{g.url}/v1/chat/completions",
                    json={"model": "r3", "messages": [{"role": "user", "content": "x"}]},
                    timeout=60,
                )
                # the leader too: a load it cannot record in the table is refused
                assert refused.status_code == 503, refused.text
                assert int(refused.headers["retry-after"]) > 0
                assert "etcd" in refused.json()["error"]["message"]
            etcd.start_again(down)
            wait_for(lambda: all(g.cluster()["store"]["connected"] for g in (g1, g2)), "recovery", 60)
            for g in (g1, g2):
                assert chat(g, "r3")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert failures == []
    finally:
        fleet.stop()


def test_alone_by_default(tmp_path: Path, upstream: RunningUpstream) -> None:
    """Without a cluster setting nothing of the fleet runs, and /admin/cluster says so."""
    fleet = Fleet("", tmp_path / "manifests", tmp_path / "gateways", [])
    write_manifests(fleet.manifests, [remote("r1", upstream.url)])
    fleet.extra_env = {"GATEWAY_CLUSTER_ETCD": ""}
    try:
        g = fleet.start("alone")
        assert g.cluster() == {"cluster": None, "role": "alone"}
        assert chat(g, "r1")
    finally:
        fleet.stop()


def test_an_eviction_by_the_leader_drains_the_requests_running_on_followers(fleet: Fleet, site: Site) -> None:
    write_manifests(fleet.manifests, [site.llamacpp("a", site.models["a"], memory="100MiB", engines=["e1"])])
    three(fleet)
    leader = fleet.leader()
    follower = next(g for g in fleet.gateways if g is not leader)
    assert chat(follower, "a")
    started = threading.Event()
    result: dict[str, Any] = {}

    def long_stream() -> None:
        try:
            with openai.OpenAI(base_url=f"{follower.url}/v1", api_key="unused", max_retries=0) as client:
                parts = client.chat.completions.create(
                    model="a",
                    messages=[{"role": "user", "content": "x"}],
                    max_tokens=LONG,
                    stream=True,
                    logit_bias={EOS: -100},
                )
                tokens = 0
                for chunk in parts:
                    started.set()
                    tokens += sum(1 for c in chunk.choices if c.delta.content)
                result["tokens"] = tokens
        except Exception as exc:
            result["error"] = exc
        finally:
            started.set()

    stream = threading.Thread(target=long_stream)
    began = time.monotonic()
    stream.start()
    assert started.wait(120)
    unloaded = httpx.post(f"{leader.url}/admin/models/a/unload", timeout=120)
    stream.join(120)
    result["seconds"] = time.monotonic() - began
    # The leader had no request of its own running, yet it waited for the follower's before stopping the
    # container: the stream ran to its end.
    assert "error" not in result, result
    assert result["tokens"] >= LONG - 8, result
    assert unloaded.json()["state"] == "unloaded"
    assert ours(site, fleet, model="a") == {"e1": 0, "e2": 0}
    wait_for(lambda: follower.model("a")["state"] == "unloaded", "the follower to stop routing to it")
