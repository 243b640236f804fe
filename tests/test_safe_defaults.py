"""Safe defaults (issue 16): an open /v1 on a non-loopback address refuses to start, bodies with a key twice
are a 400, a 500 says a request id and not the exception, a 502 names the model and replica and not where
the upstream runs, and a non-streamed answer over the cap is a 502."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from backends.errors import GatewayError
from gateway.http.errors import internal_error
from tests.conftest import ROOT, RunningGateway, free_port, llama_manifest, wait_for, write_manifests
from tests.fake_upstream import FakeUpstream, RunningUpstream
from tests.test_fault_matrix import remote

CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


def _serve(directory: Path, host: str, capture: bool = True, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(directory), "--host", host,
         "--port", str(free_port()), "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, **{f"GATEWAY_{k.upper()}": v for k, v in env.items()}},
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
        text=True,
    )  # fmt: skip


def test_an_open_v1_on_every_interface_refuses_to_start_unless_intended(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    directory = write_manifests(tmp_path / "m", [llama_manifest("a", model_files["a"])])
    refused = _serve(directory, "0.0.0.0", admin_key="sk-admin")  # an admin key alone leaves /v1 open
    _, stderr = refused.communicate(timeout=120)
    assert refused.returncode == 2
    assert "refusing to serve /v1 without API keys on 0.0.0.0" in stderr
    assert "GATEWAY_ALLOW_OPEN=true" in stderr
    for env in ({"allow_open": "true"}, {"api_keys": '{"alice": "sk-alice"}'}):
        started = _serve(directory, "0.0.0.0", capture=False, **env)
        try:
            with pytest.raises(subprocess.TimeoutExpired):  # still serving: it did not refuse
                started.wait(timeout=3)
        finally:
            started.terminate()
            started.wait(30)


def test_a_key_twice_in_a_body_is_a_400(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"]), llama_manifest("b", model_files["b"])])
    body = b'{"model": "a", "model": "b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}'
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", content=body, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"
    assert "appears twice" in r.json()["error"]["message"]
    assert gw.model_state("a")["loads"] == gw.model_state("b")["loads"] == 0  # refused before any load


def test_a_500_carries_a_request_id_not_the_exception(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.errors")
    try:
        raise RuntimeError("/secret/path/model.gguf at 10.0.0.5")
    except RuntimeError:
        err = internal_error("/v1/chat/completions")
    assert isinstance(err, GatewayError) and err.status == 500
    assert "secret" not in err.message and "10.0.0.5" not in err.message
    request_id = err.message.split("request id ")[1].split(";")[0]
    assert request_id.startswith("req_")
    (record,) = caplog.records
    assert request_id in record.getMessage() and record.exc_info is not None  # the log has both


def test_a_502_names_the_model_and_replica_not_the_upstreams_address(
    serve: Callable[..., RunningGateway],
) -> None:
    closed = free_port()  # nothing listens there
    gw = serve([remote("m", f"http://127.0.0.1:{closed}")])
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", json={**CHAT, "model": "m"}, timeout=60)
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert message.startswith("model 'm' replica 0: ") and str(closed) not in message, message


def test_a_non_streamed_answer_over_the_cap_is_a_502_and_streams_pass(
    serve: Callable[..., RunningGateway], stack: ExitStack
) -> None:
    upstream = stack.enter_context(RunningUpstream(FakeUpstream(), free_port()))
    gw = serve([remote("m", upstream.url)], max_upstream_body_bytes=100)  # the fake's answer is ~250 bytes
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", json={**CHAT, "model": "m"}, timeout=60)
    assert r.status_code == 502
    assert "GATEWAY_MAX_UPSTREAM_BODY_BYTES" in r.json()["error"]["message"]
    with httpx.stream(
        "POST", f"{gw.base_url}/v1/chat/completions", json={**CHAT, "model": "m", "stream": True}, timeout=60
    ) as s:
        assert s.status_code == 200
        assert "[DONE]" in s.read().decode()
    wait_for(lambda: upstream.app.requests == 2, "both requests to reach the upstream")


def test_only_keys_the_gateway_reads_must_be_unique() -> None:
    """A key the gateway reads, twice in one object, could be read one way here and the other upstream."""
    from backends.errors import InvalidRequest
    from gateway.api.validation import decode

    assert decode(b'{"model": "a", "messages": [{"role": "user", "content": "model"}]}')["model"] == "a"
    with pytest.raises(InvalidRequest) as twice:
        decode(b'{"model": "a", "stream": false, "messages": [], "stream": true}')
    assert twice.value.param == "stream"
    # read by one side only (the upstream, or the gateway's own parse for the in-process engine)
    assert decode(b'{"model": "a", "temperature": 0, "temperature": 1}')["temperature"] == 1
