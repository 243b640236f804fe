"""Shared fixtures: synthetic GGUF models, manifest directories, and a real gateway on a real socket."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import uvicorn
import uvloop
import yaml
from hypothesis import settings as hypothesis_settings

from backends.kinds import Kinds
from gateway.config.settings import Settings
from gateway.control.build import build_gateway
from gateway.http.app import build_app
from gateway.http.server_limits import server_options
from tests.fake_upstream import FakeUpstream, RunningUpstream
from tests.synthetic_gguf import Shape, write_model

# No time limit on a Hypothesis example (its default is 200 ms): on a loaded machine a pure test's example can
# take longer, and that is not a failure (a unit test has no time limit here).
hypothesis_settings.register_profile("no-deadline", deadline=None)
hypothesis_settings.load_profile("no-deadline")

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS = "2"  # the synthetic vocabulary's </s>; a logit bias against it makes generation run to max_tokens


FAILED = pytest.StashKey[bool]()  # a test whose call failed (the console's fixture then saves a screenshot)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    files = {name: write_model(d / f"{name}.gguf", Shape(), seed=i) for i, name in enumerate("abcd")}
    corrupt = d / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 4096)
    files["corrupt"] = corrupt
    return files


def llama_manifest(name: str, model: Path, **extra: Any) -> dict[str, Any]:
    backend = {"kind": "llama_cpp", "model": str(model), "n_ctx": 512, "n_threads": 1}
    backend.update(extra.pop("backend", {}))
    return {"name": name, "backend": backend, **extra}


def write_manifests(directory: Path, manifests: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for m in manifests:
        (directory / f"{m['name']}.yaml").write_text(yaml.safe_dump(m))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningGateway:
    """uvicorn serving the gateway on a free port, on its own thread and event loop, with the server options
    of ``llm-gateway serve``."""

    def __init__(self, settings: Settings, kinds: Kinds | None = None) -> None:
        self.settings = settings
        self.gateway = build_gateway(settings, kinds)
        app = build_app(settings, self.gateway)
        # The production server options (the limits and timeouts `llm-gateway serve` gives uvicorn), so that
        # every integration test runs the server clients meet.
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            lifespan="on",
            **server_options(settings),
        )
        self.server = uvicorn.Server(config)
        # uvloop, as `llm-gateway serve` runs it (uvicorn picks it when installed)
        self.thread = threading.Thread(target=lambda: uvloop.run(self.server.serve()), daemon=True)
        self.base_url = f"http://127.0.0.1:{settings.port}"
        self._clients: list[openai.OpenAI | anthropic.Anthropic] = []

    def __enter__(self) -> RunningGateway:
        self.thread.start()
        wait_for(lambda: self.server.started, what="gateway start")
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients:  # closed here, not whenever the garbage collector gets to them
            client.close()
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, **kw: Any) -> openai.OpenAI:
        """An SDK client for this gateway; closed with the gateway."""
        kw.setdefault("api_key", "unused")
        client = openai.OpenAI(base_url=f"{self.base_url}/v1", max_retries=0, **kw)
        self._clients.append(client)
        return client

    def anthropic_client(self, api_key: str = "unused") -> anthropic.Anthropic:
        """An Anthropic SDK client for this gateway; closed with the gateway (its sockets would otherwise be
        closed by the garbage collector, whose ResourceWarning fails whichever test it lands in)."""
        client = anthropic.Anthropic(base_url=self.base_url, api_key=api_key, max_retries=0)
        self._clients.append(client)
        return client

    def admin(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base_url}/admin/models", timeout=30).json())

    def model_state(self, name: str) -> dict[str, Any]:
        return next(m for m in self.admin()["models"] if m["name"] == name)


def process_gone(pid: int) -> bool:
    """The process has exited (or is a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def wait_for(predicate: Callable[[], Any], what: str, deadline: float = 60.0) -> Any:
    """Poll until ``predicate`` is truthy; the deadline only bounds a hang, it is not what is tested."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


LONG_COOLDOWN = 30.0


@pytest.fixture
def long_cooldown(monkeypatch: pytest.MonkeyPatch) -> float:
    """A failed replica's first ejection lasts 30 s here, not 1 s: a test that asserts where the requests
    after a failure went must not see the replica come back because a loaded machine stalled it for a
    second between two of them. Retry-After then reads 30."""
    monkeypatch.setattr("gateway.routing.pool.COOLDOWN", LONG_COOLDOWN)
    return LONG_COOLDOWN


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(manifests: list[dict[str, Any]], kinds: Kinds | None = None, **settings: Any) -> RunningGateway:
        directory = write_manifests(tmp_path / f"manifests{len(started)}", manifests)
        settings.setdefault("memory_budget", 8 * 2**30)
        gw = RunningGateway(Settings(manifests=directory, port=free_port(), **settings), kinds)
        started.append(gw.__enter__())
        return gw

    yield start
    for gw in started:
        gw.__exit__()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Context managers a test enters as it goes, exited at its end."""
    with ExitStack() as s:
        yield s


@pytest.fixture
def healthy(stack: ExitStack) -> RunningUpstream:
    """A fake upstream that answers well: the bystanders' in the fault matrix and the slow-client tests."""
    return stack.enter_context(RunningUpstream(FakeUpstream(), free_port()))
