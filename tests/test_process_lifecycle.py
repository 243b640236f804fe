"""Launched llama-server processes that must never leak: a SIGKILLed gateway takes them with it (the kernel's
parent-death signal, set by setpriv, no Python between fork and exec), and a port taken between being picked
and being bound costs a retry on another port, not a failed load."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from backends.llama_server import replica as process
from tests.conftest import ROOT, RunningGateway, free_port, process_gone, wait_for, write_manifests
from tests.test_llama_server import binaries, server_manifest  # noqa: F401 (binaries: a fixture)


def _start_gateway(directory: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(directory), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip


@pytest.mark.usefixtures("binaries")
def test_a_killed_gateway_takes_its_llama_servers_with_it_and_the_next_start_is_clean(
    model_files: dict[str, Path], tmp_path: Path
) -> None:
    directory = write_manifests(tmp_path / "m", [server_manifest("s", model_files["a"], n_ctx=512)])
    port = free_port()
    gateway = _start_gateway(directory, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base), "the gateway to start")
        loaded = httpx.post(f"{base}/admin/models/s/load", timeout=120).json()
        child = loaded["replicas"][0]["pid"]
        assert Path(f"/proc/{child}/exe").resolve().name == "llama-server"  # setpriv exec'd it in place
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(30)
        wait_for(lambda: process_gone(child), "llama-server to die with the gateway")
        # The next start, on the same port and manifests: it serves, with a llama-server of its own.
        gateway = _start_gateway(directory, port)
        wait_for(lambda: _answers(base), "the gateway to start again")
        again = httpx.post(f"{base}/admin/models/s/load", timeout=120)
        assert again.status_code == 200 and again.json()["state"] == "ready", again.text
        assert again.json()["replicas"][0]["pid"] != child
        chat = {"model": "s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(f"{base}/v1/chat/completions", json=chat, timeout=120).status_code == 200
    finally:
        gateway.kill()
        gateway.wait(30)


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.usefixtures("binaries")
def test_a_port_taken_before_llama_server_binds_it_is_retried_on_another(
    serve: Callable[..., RunningGateway],
    model_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([taken])  # the race: the first port picked is taken by someone else before the bind
    real = process._free_port
    monkeypatch.setattr(process, "_free_port", lambda: next(picks, None) or real())
    try:
        gw = serve([server_manifest("s", model_files["a"], n_ctx=512)])
        answer = httpx.post(f"{gw.base_url}/admin/models/s/load", timeout=120)
        assert answer.status_code == 200 and answer.json()["state"] == "ready"
        replica = answer.json()["replicas"][0]
        assert not replica["url"].endswith(f":{taken}")
        logs = httpx.get(f"{gw.base_url}/admin/models/s/logs", timeout=10).json()["replicas"][0]["log"]
        assert any("couldn't bind" in line for line in logs)  # the first try really failed to bind
    finally:
        squatter.close()


def test_a_port_whose_connections_arrive_elsewhere_is_not_taken_for_free() -> None:
    """What a NAT rule does to a port (a container engine's DNAT for a port it published): a connection
    to it lands on another listener. Here the other listener is simply the one bound to that port, and
    ours is bound elsewhere: the check must see that its connection did not reach it."""
    with socket.socket() as ours, socket.socket() as elsewhere:
        for s in (ours, elsewhere):
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        ours.settimeout(0.5)
        assert not process._reaches(ours, elsewhere.getsockname()[1])
        assert process._reaches(ours, ours.getsockname()[1])


def test_a_free_port_is_left_bindable_by_the_server() -> None:
    """The check connects to the port it picked; it must not leave it in TIME_WAIT, where a server that
    does not set SO_REUSEADDR cannot bind it (llama-server could not: three failed binds in a row)."""
    for _ in range(20):
        port = process._free_port()
        with socket.socket() as server:  # no SO_REUSEADDR, like llama-server's bind
            server.bind(("127.0.0.1", port))
