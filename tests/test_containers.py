"""The container kind, for real: two Docker Engine APIs (podman, started by tests/engine/start.sh, which
README's test command runs) stand for two hosts; containers run the real llama-server and ggml-rpc-server
from llama.cpp's sources, with SmolLM2 or synthetic models; the gateway is driven over real sockets with the
official openai SDK. A missing engine fails these tests: it is never a skip.

The test image is llama.cpp's server image in shape (entrypoint /app/llama-server) with nothing inside: each
manifest bind-mounts the host's /usr and the llama.cpp build at /app, as a user mounts models and configs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import openai
import pytest
import yaml

from backends.docker.engine import LABEL_INSTANCE, LABEL_MODEL
from backends.llama_server.build import built_binary
from tests.conftest import EOS, ROOT, SMOLLM2, RunningGateway, free_port, wait_for

ENGINE_DIR = Path(os.environ.get("GATEWAY_TEST_ENGINE_DIR", "/tmp/llm-gateway-engines"))
IMAGE = "localhost/llm-gateway-llamacpp:test"
MiB = 2**20


@pytest.fixture(scope="session")
def engine_urls() -> dict[str, str]:
    urls = {name: f"unix://{ENGINE_DIR}/{name}.sock" for name in ("e1", "e2")}
    for name, url in urls.items():
        try:
            client = docker.DockerClient(base_url=url, timeout=10)
            client.ping()
            client.images.get(IMAGE)
            client.close()
        except Exception as exc:
            pytest.fail(f"Docker engine {name} ({url}) is not ready: {exc}. Run tests/engine/start.sh.")
    return urls


@pytest.fixture(scope="session")
def clients(engine_urls: dict[str, str]) -> Iterator[dict[str, Any]]:
    made = {name: docker.DockerClient(base_url=url, timeout=60) for name, url in engine_urls.items()}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    server = built_binary("llama-server")
    assert server is not None, "run `llm-gateway build-llama-server` (README's test command does)"
    return server.parent


@pytest.fixture(scope="session")
def host_ip() -> str:
    """This machine's address on its network: how one engine's containers reach the other's ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
        return str(s.getsockname()[0])


def ask(client: openai.OpenAI, model: str) -> str:
    """A two-token chat; its answer (the test is that it answers)."""
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    return r.choices[0].message.content or ""


def name_of(container: Any) -> str:
    return str(container.attrs["Names"][0]).lstrip("/")  # a sparse listing has no "Name"


def count(found: dict[str, list[Any]]) -> dict[str, int]:
    return {name: len(cs) for name, cs in found.items()}


@dataclass
class Site:
    """What every test here uses: the two engines, the llama.cpp build, this machine's address, the model
    files, and a gateway site.instance id of the test's own (so it sees only its own containers)."""

    start: Callable[..., RunningGateway]
    urls: dict[str, str]
    clients: dict[str, Any]
    bin_dir: Path
    host_ip: str
    models: dict[str, Path]
    instance: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")

    def engines(self, **memory: str) -> list[dict[str, Any]]:
        """Engine settings; ``memory`` gives an engine its own RAM budget (else it shares the host's)."""
        out = []
        for name, url in self.urls.items():
            entry: dict[str, Any] = {"name": name, "url": url}
            entry |= {"address": self.host_ip, "publish_ip": self.host_ip}
            if name in memory:
                entry["memory"] = memory[name]
            out.append(entry)
        return out

    def llamacpp(self, name: str, model: Path, memory: str | None = None, **backend: Any) -> dict[str, Any]:
        """A manifest for the test image: the host's /usr and the llama.cpp build mounted, as a user mounts
        models and configs."""
        spec = {
            "kind": "container",
            "preset": "llamacpp",
            "image": IMAGE,
            "pull": "never",
            "model": str(model),
            "volumes": ["/usr:/usr:ro", f"{self.bin_dir}:/app:ro"],
            "n_ctx": 2048,
            "threads": 1,
            "load_timeout": 120,
            "stop_timeout": 2,
        }
        spec.update(backend)
        manifest: dict[str, Any] = {"name": name, "backend": spec, "health_check_interval": "1s"}
        if memory is not None:
            manifest["memory"] = memory
        return manifest

    def serve(
        self,
        manifests: list[dict[str, Any]],
        engines: list[dict[str, Any]] | None = None,
        instance: str | None = None,
    ) -> RunningGateway:
        return self.start(manifests, engines=engines or self.engines(), instance_id=instance or self.instance)

    def ours(self, instance: str | None = None, **labels: str) -> dict[str, list[Any]]:
        """Containers of the gateway instance on each engine (running or not), filtered by labels."""
        filters = [f"{LABEL_INSTANCE}={instance or self.instance}"]
        filters += [f"llm-gateway.{k}={v}" for k, v in labels.items()]
        # sparse: no inspect per container, which fails for one the gateway removes meanwhile
        return {
            name: c.containers.list(all=True, sparse=True, filters={"label": filters})
            for name, c in self.clients.items()
        }


@pytest.fixture
def site(
    serve: Callable[..., RunningGateway],
    engine_urls: dict[str, str],
    clients: dict[str, Any],
    bin_dir: Path,
    host_ip: str,
    model_files: dict[str, Path],
) -> Site:
    return Site(serve, engine_urls, clients, bin_dir, host_ip, model_files)


def test_cold_start_streaming_chat_embeddings_and_admin_details(site: Site) -> None:
    gw = site.serve(
        [
            site.llamacpp("smol", SMOLLM2, threads=2, parallel=2, engines=["e1"]),
            site.llamacpp("smol-embed", SMOLLM2, embeddings=True, n_ctx=512, engines=["e2"]),
        ],
    )
    assert count(site.ours()) == {"e1": 0, "e2": 0}  # lazy: nothing runs before a request
    client = gw.client()
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert r.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True
        )
    )
    assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    e = client.embeddings.create(model="smol-embed", input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 576

    running = site.ours(model="smol", role="server")
    assert count(running) == {"e1": 1, "e2": 0}
    replica = gw.model_state("smol")["replicas"][0]
    assert replica["engine"] == "e1" and replica["container"] == name_of(running["e1"][0])
    assert replica["url"].startswith(f"http://{site.host_ip}:")
    logs = httpx.get(f"{gw.base_url}/admin/models/smol/logs", timeout=10).json()["replicas"][0]["log"]
    assert any("slot" in line or "server is listening" in line for line in logs)
    assert count(site.ours(model="smol-embed")) == {"e1": 0, "e2": 1}
    gw.__exit__()  # a gateway that shuts down stops and removes its containers
    assert count(site.ours()) == {"e1": 0, "e2": 0}


def test_eviction_stops_and_removes_the_container(site: Site) -> None:
    gw = site.serve(
        [
            site.llamacpp("a", site.models["a"], memory="100MiB", engines=["e1"]),
            site.llamacpp("b", site.models["b"], memory="100MiB", engines=["e1"]),
        ],
        engines=site.engines(e1="150MiB"),
    )
    client = gw.client()
    ask(client, "a")
    assert count(site.ours(model="a"))["e1"] == 1
    ask(client, "b")
    # Only one fits in e1's 150 MiB: loading b evicted a, and a's container is gone, not just stopped.
    assert count(site.ours(model="a"))["e1"] == 0
    assert count(site.ours(model="b"))["e1"] == 1
    assert gw.model_state("a")["state"] == "unloaded"
    devices = {d["device"]: d for d in gw.admin()["devices"]}
    assert devices["e1:ram"]["used_bytes"] == 100 * MiB <= devices["e1:ram"]["budget_bytes"]


def test_replicas_spread_over_both_engines_and_a_full_one_is_not_used(site: Site) -> None:
    spread = site.llamacpp("spread", site.models["a"], memory="200MiB", replicas=2)
    first = f"test-{uuid.uuid4().hex[:8]}"
    gw = site.serve([spread], engines=site.engines(e1="250MiB", e2="250MiB"), instance=first)
    ask(gw.client(), "spread")
    assert count(site.ours(first, model="spread")) == {"e1": 1, "e2": 1}
    assert sorted(r["engine"] for r in gw.model_state("spread")["replicas"]) == ["e1", "e2"]

    # e1 is full with a pinned model: both replicas go to e2, and the pinned one stays.
    second = f"test-{uuid.uuid4().hex[:8]}"
    filler = site.llamacpp("filler", site.models["b"], memory="200MiB", engines=["e1"])
    filler["pinned"] = True
    gw2 = site.serve([filler, spread], engines=site.engines(e1="250MiB", e2="250MiB"), instance=second)
    wait_for(lambda: gw2.model_state("filler")["state"] == "ready", "the pinned model", deadline=120)
    ask(gw2.client(), "spread")
    assert count(site.ours(second, model="spread")) == {"e1": 0, "e2": 2}
    assert gw2.model_state("filler")["state"] == "ready"


def test_a_model_spread_over_rpc_worker_containers_on_both_engines(site: Site) -> None:
    worker = {"memory": "512MiB", "command": ["/app/ggml-rpc-server"], "threads": 1}
    gw = site.serve(
        [
            site.llamacpp(
                "split",
                SMOLLM2,
                engines=["e1"],
                n_gpu_layers=99,
                threads=1,
                rpc_workers=[{"engine": "e1", **worker}, {"engine": "e2", **worker}],
            )
        ],
        engines=site.engines(e1="2GiB", e2="2GiB"),
    )
    r = gw.client().chat.completions.create(
        model="split", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert r.choices[0].message.content
    workers = site.ours(model="split", role="rpc-worker")
    assert count(workers) == {"e1": 1, "e2": 1}
    for found in workers.values():  # both workers served the main server
        assert b"Accepted client connection" in found[0].logs()
    used = {d["device"]: d["used_bytes"] for d in gw.admin()["devices"]}
    assert used["e1:ram"] > 512 * MiB and used["e2:ram"] == 512 * MiB

    httpx.post(f"{gw.base_url}/admin/models/split/evict", timeout=60).raise_for_status()
    assert count(site.ours(model="split")) == {"e1": 0, "e2": 0}  # workers stop with the model


def test_a_half_failed_start_removes_the_workers_it_had_started(site: Site) -> None:
    good = {"engine": "e1", "memory": "256MiB", "command": ["/app/ggml-rpc-server"]}
    broken = {"engine": "e2", "memory": "256MiB", "command": ["/app/no-such-binary"]}
    gw = site.serve(
        [site.llamacpp("half", SMOLLM2, engines=["e1"], n_gpu_layers=99, rpc_workers=[good, broken])],
        engines=site.engines(e1="2GiB", e2="2GiB"),
    )
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw.client(), "half")
    assert info.value.status_code == 503 and "'e2' refused to start" in info.value.message
    assert count(site.ours()) == {"e1": 0, "e2": 0}  # the worker that did start is gone too
    used = {d["device"]: d["used_bytes"] for d in gw.admin()["devices"]}
    assert used["e1:ram"] == used["e2:ram"] == 0


def test_a_container_that_crashes_mid_stream(site: Site) -> None:
    gw = site.serve(
        [site.llamacpp("crashy", site.models["a"], n_ctx=65536, engines=["e1"])],
    )
    body = {
        "model": "crashy",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 100_000,
        "logit_bias": {EOS: -100},
    }
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        victim = site.ours(model="crashy")["e1"][0]
        victim.kill()
        events = [line for line in lines if line.startswith("data: ")]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["source"] == "upstream"  # a clear error, not a silently truncated stream

    def down_with_exit_code() -> Any:
        replica = gw.model_state("crashy")["replicas"][0]
        return "exited with" in (replica["exit_status"] or "") and replica

    replica = wait_for(down_with_exit_code, "the replica to report the exit")
    assert name_of(victim) in replica["exit_status"]

    def served() -> bool:  # the replica is recreated with backoff, and serves again
        try:
            ask(gw.client(), "crashy")
        except openai.APIError:
            return False
        return True

    wait_for(served, "the container to be recreated", deadline=120)
    now = site.ours(model="crashy")["e1"]
    assert len(now) == 1 and name_of(now[0]) != name_of(victim)  # the dead one was removed, a new one serves


def test_a_quiet_container_is_not_taken_for_a_dead_one(site: Site) -> None:
    """The SDK's read timeout (the engine's ``timeout``) also ends a log stream that is only quiet."""
    settings = site.engines()
    settings[0]["timeout"] = 1
    manifest = site.llamacpp("quiet", site.models["a"], engines=["e1"])
    manifest["health_check_interval"] = 0  # no probes: nothing for the server to log
    gw = site.serve([manifest], engines=settings)
    client = gw.client()
    ask(client, "quiet")
    before = name_of(site.ours(model="quiet")["e1"][0])
    time.sleep(3)  # silence longer than the read timeout: the duration is what is tested
    ask(client, "quiet")
    replica = gw.model_state("quiet")["replicas"][0]
    assert replica["exit_status"] is None and replica["container"] == before
    assert [name_of(c) for c in site.ours(model="quiet")["e1"]] == [before]


def test_a_missing_image_and_an_unreachable_engine_are_503s_and_other_models_serve(
    site: Site, tmp_path: Path
) -> None:
    settings = site.engines()
    settings.append({"name": "gone", "url": f"unix://{tmp_path}/no-engine.sock", "timeout": 5})
    gw = site.serve(
        [
            site.llamacpp("ok", site.models["a"], engines=["e1"]),
            site.llamacpp(
                "noimage",
                site.models["a"],
                engines=["e1"],
                image="localhost/no-such:1",
                pull="missing",
            ),
            site.llamacpp("far", site.models["a"], engines=["gone"]),
        ],
        engines=settings,
    )
    client = gw.client()
    for model, names in (("noimage", "localhost/no-such:1"), ("far", "'gone'")):
        with pytest.raises(openai.APIStatusError) as info:
            ask(client, model)
        assert info.value.status_code == 503
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert names in info.value.message
    ask(client, "ok")
    # A start that failed left no container behind, and the load backoff holds the next request off.
    assert count(site.ours(model="noimage")) == {"e1": 0, "e2": 0}
    with pytest.raises(openai.APIStatusError) as again:
        ask(client, "noimage")
    assert again.value.status_code == 503 and "localhost/no-such:1" in again.value.message
    assert gw.model_state("noimage")["loads"] == 1


def test_gpu_placement_with_device_totals_from_settings(site: Site) -> None:
    """Per-GPU budgets with GPU totals from settings (no GPU here: podman accepts the device request and
    ignores it, so the containers run on the CPU while the placement and budgets are the real ones)."""
    settings = site.engines()
    settings[0]["gpus"] = ["1GiB", "1GiB"]
    gw = site.serve(
        [
            site.llamacpp("a", site.models["a"], memory="700MiB", engines=["e1"], gpus=1),
            site.llamacpp("b", site.models["b"], memory="700MiB", engines=["e1"], gpus=1),
            site.llamacpp("c", site.models["c"], memory="700MiB", engines=["e1"], gpu_ids=[1]),
        ],
        engines=settings,
    )
    client = gw.client()

    def placed(model: str) -> list[str]:
        ask(client, model)
        return list(gw.model_state(model)["replicas"][0]["devices"])

    assert placed("a") == ["e1:gpu0"]
    assert placed("b") == ["e1:gpu1"]  # GPU 0 is full: the other GPU, nothing evicted
    assert gw.model_state("a")["state"] == "ready"
    # c may only use GPU 1: b, which holds it, is evicted, not a (older, but on the other GPU).
    assert placed("c") == ["e1:gpu1"]
    assert gw.model_state("b")["state"] == "unloaded" and gw.model_state("a")["state"] == "ready"
    used = {d["device"]: d["used_bytes"] for d in gw.admin()["devices"]}
    assert used["e1:gpu0"] == used["e1:gpu1"] == 700 * MiB


def test_leftovers_of_a_sigkilled_gateway_are_removed_and_nothing_else(site: Site, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "m.yaml").write_text(yaml.safe_dump(site.llamacpp("m", site.models["a"], engines=["e1"])))
    engines_file = tmp_path / "engines.yaml"
    engines_file.write_text(yaml.safe_dump(site.engines()))
    e1 = site.clients["e1"]
    foreign = [
        e1.containers.create(IMAGE, ["--version"], name=f"not-ours-{site.instance}"),
        e1.containers.create(
            IMAGE, ["--version"], labels={LABEL_INSTANCE: "another-gateway", LABEL_MODEL: "m"}
        ),
    ]
    try:
        port = free_port()
        first = _gateway_process(manifests, engines_file, port, site.instance)
        try:
            httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                timeout=120,
            ).raise_for_status()
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        assert count(site.ours())["e1"] == 1  # the killed gateway's container outlived it

        second = _gateway_process(manifests, engines_file, free_port(), site.instance)
        try:
            wait_for(lambda: count(site.ours())["e1"] == 0, "the leftover to be removed")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        for c in foreign:  # never touched: not labelled, or another gateway's
            c.reload()
    finally:
        for c in foreign:
            c.remove(force=True)


def _gateway_process(
    manifests: Path, engines_file: Path, port: int, instance: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GATEWAY_INSTANCE_ID": instance}
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--manifests",
        str(manifests),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        [*command, "--engines", str(engines_file), "--memory-budget", "4GiB"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # exited: stop waiting, the assertion below says so

    wait_for(up, "the gateway process")
    assert proc.poll() is None, "the gateway process exited"
    return proc


def test_admin_models_shows_the_phases_of_a_container_load(site: Site, tmp_path: Path) -> None:
    """``load_phase`` while a container model loads: the container starts, and its server takes a while to
    listen (a wrapper sleeps before llama-server starts, as a big image's entrypoint would)."""
    wrappers = tmp_path / "app"
    wrappers.mkdir()
    server = wrappers / "llama-server"
    server.write_text('#!/usr/bin/sh\nsleep 3\nLD_LIBRARY_PATH=/real exec /real/llama-server "$@"\n')
    server.chmod(0o755)
    volumes = ["/usr:/usr:ro", f"{site.bin_dir}:/real:ro", f"{wrappers}:/app:ro"]
    gw = site.serve([site.llamacpp("slow", site.models["b"], n_ctx=512, engines=["e1"], volumes=volumes)])
    loading = threading.Thread(
        target=lambda: httpx.post(f"{gw.base_url}/admin/models/slow/load", timeout=180).close()
    )
    loading.start()
    phases: list[str] = []

    def look() -> bool:
        model = gw.model_state("slow")
        if model["load_phase"] and model["load_phase"] not in phases:
            phases.append(model["load_phase"])
        return bool(model["state"] == "ready" or model["last_error"])

    try:
        wait_for(look, "the load", deadline=180)
    finally:
        loading.join(180)
    assert gw.model_state("slow")["state"] == "ready", gw.model_state("slow")["last_error"]
    assert "waiting for the server to listen" in phases, phases
    assert set(phases) <= {
        "starting",  # the scheduler's generic phase, read before the replica says what it does
        "starting server container", "waiting for the server to listen", "loading weights / warming up"
    }, phases  # fmt: skip
    assert gw.model_state("slow")["load_phase"] is None
