"""Operator control over real sockets: pins that survive pressure and restarts, unloads that drain, are forced
or cancel a load, the plan against a real load, hot reload while requests stream, and who may call what."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from backends.gguf.memory import MiB
from gateway.config.settings import Settings
from tests.conftest import (
    EOS,
    RunningGateway,
    free_port,
    llama_manifest,
    process_gone,
    wait_for,
    write_manifests,
)
from tests.test_llama_server import server_manifest

LONG = {"max_tokens": 100_000, "logit_bias": {EOS: -100}}


def admin(gw: RunningGateway, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{gw.base_url}{path}", headers=headers, timeout=60, **kw)


def chat(gw: RunningGateway, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **extra}
    return httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, timeout=60)


def states(gw: RunningGateway) -> dict[str, str]:
    return {m["name"]: m["state"] for m in gw.admin()["models"]}


def three(model_files: dict[str, Path], **extra: Any) -> list[dict[str, Any]]:
    return [llama_manifest(n, model_files[n], memory=f"{100 * MiB}", **extra) for n in "abc"]


def test_pin_survives_pressure_and_a_restart_and_unpin_makes_it_evictable(
    model_files: dict[str, Path], tmp_path: Path
) -> None:
    directory = write_manifests(tmp_path / "manifests", three(model_files))
    settings = Settings(manifests=directory, port=free_port(), memory_budget=250 * MiB)
    with RunningGateway(settings) as gw:
        assert admin(gw, "POST", "/admin/models/a/pin").json()["state"] == "ready"  # pinning loads it
        for name in "bcbc":
            assert chat(gw, name).status_code == 200
        assert states(gw)["a"] == "ready"  # never evicted while b and c took turns
    saved = json.loads((directory / ".llm-gateway-pins.json").read_text())
    assert saved == {"pinned": {"a": True}}

    with RunningGateway(Settings(manifests=directory, port=free_port(), memory_budget=250 * MiB)) as gw:
        wait_for(lambda: states(gw)["a"] == "ready", "the pinned model to load at startup")
        assert gw.model_state("a")["pinned"]
        assert admin(gw, "POST", "/admin/models/a/unpin").json()["pinned"] is False
        for name in "bc":
            assert chat(gw, name).status_code == 200
        assert states(gw)["a"] == "unloaded"  # evictable again: it was the least recently used


def test_unload_drains_a_stream_and_force_cuts_it(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    # A drain grace far longer than the client's read timeout: only the forced unload can end this test.
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536})], drain_grace=3600)
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True, **LONG}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        result: dict[str, Any] = {}
        drain = threading.Thread(
            target=lambda: result.update(admin(gw, "POST", "/admin/models/a/unload").json())
        )
        drain.start()
        wait_for(lambda: states(gw)["a"] == "draining", "the drain to begin")
        forced = admin(gw, "POST", "/admin/models/a/unload", params={"force": "true"})
        assert forced.status_code == 200
        events = [line for line in lines if line.startswith("data: ")]
        drain.join(60)
    assert "unloaded" in json.loads(events[-1].removeprefix("data: "))["error"]["message"]
    assert forced.json()["state"] == "unloaded"
    assert result["state"] == "unloaded"  # the drain's own call returned once the forced unload was over


def test_unloading_a_model_that_is_loading_cancels_the_load(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path], tmp_path: Path
) -> None:
    slow = tmp_path / "slow-llama-server"
    pidfile = tmp_path / "pid"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    gw = serve([server_manifest("slow", model_files["a"], binary=str(slow), load_timeout=600)])
    waiting: dict[str, int] = {}
    request = threading.Thread(target=lambda: waiting.update(status=chat(gw, "slow").status_code))
    request.start()
    wait_for(lambda: pidfile.exists() and states(gw)["slow"] == "loading", "the load to start")
    pid = int(pidfile.read_text())
    answer = admin(gw, "POST", "/admin/models/slow/unload")
    assert answer.status_code == 200 and answer.json()["state"] == "unloaded"
    request.join(60)
    assert waiting["status"] == 503  # the request that waited for the load is told, not left hanging
    assert answer.json()["last_error"] is None  # a cancel is not a failure: no backoff
    wait_for(lambda: process_gone(pid), "the half-started llama-server to be stopped")
    assert gw.model_state("slow")["loads"] == 1


def test_plan_says_what_a_real_load_then_does(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve(three(model_files), memory_budget=250 * MiB)
    for name in "ab":
        assert chat(gw, name).status_code == 200
    plan = admin(gw, "GET", "/admin/models/c/plan").json()
    assert plan["fits"] and plan["evict"] == ["a"]  # the least recently used
    after = {d["device"]: d["used_bytes"] for d in plan["memory_after"]}
    assert states(gw) == {"a": "ready", "b": "ready", "c": "unloaded"}  # a plan changes nothing
    assert admin(gw, "POST", "/admin/models/c/load").json()["state"] == "ready"
    assert states(gw) == {"a": "unloaded", "b": "ready", "c": "ready"}
    assert {
        d["device"]: d["used_bytes"] for d in admin(gw, "GET", "/admin/devices").json()["devices"]
    } == after
    assert admin(gw, "GET", "/admin/models/c/plan").json()["already_loaded"]

    assert admin(gw, "POST", "/admin/models/b/pin").status_code == 200
    assert admin(gw, "POST", "/admin/models/c/pin").status_code == 200
    blocked = admin(gw, "GET", "/admin/models/a/plan").json()
    assert not blocked["fits"] and {b["model"] for b in blocked["blocked_by"]} == {"b", "c"}
    assert chat(gw, "a").status_code == 503  # and the real load agrees


def test_a_model_that_can_never_fit_is_reported_before_any_request(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("huge", model_files["a"], memory=f"{900 * MiB}")], memory_budget=250 * MiB)
    model = gw.model_state("huge")
    assert model["fits"] is False and "more than the whole budget" in model["never_fits_reason"]


def _reload(gw: RunningGateway) -> dict[str, Any]:
    answer = admin(gw, "POST", "/admin/reload")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_reload_adds_removes_and_changes_models_while_requests_stream(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path], tmp_path: Path
) -> None:
    gw = serve([llama_manifest(n, model_files[n]) for n in "ab"], drain_grace=60)
    directory = gw.settings.manifests
    assert chat(gw, "a").status_code == 200 and chat(gw, "b").status_code == 200
    client = gw.client()
    stream = client.chat.completions.create(
        model="a", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=300,
        logit_bias={EOS: -100},
    )  # fmt: skip
    first = next(iter(stream))
    (directory / "b.yaml").unlink()
    changed = llama_manifest("a", model_files["a"], aliases=["a-new"])
    (directory / "a.yaml").write_text(yaml.safe_dump(changed))
    (directory / "c.yaml").write_text(yaml.safe_dump(llama_manifest("c", model_files["c"])))

    result: dict[str, Any] = {}
    reload = threading.Thread(target=lambda: result.update(_reload(gw)))
    reload.start()
    wait_for(lambda: states(gw).get("a") == "draining", "a to drain")
    waiting: dict[str, int] = {}
    newcomer = threading.Thread(target=lambda: waiting.update(status=chat(gw, "a").status_code))
    newcomer.start()  # arrives during the drain: served by the new version once the old one is gone
    chunks = [first, *stream]  # the stream in flight completes: no error, all of it
    reload.join(60)
    newcomer.join(60)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 299
    assert result == {"added": ["c"], "removed": ["b"], "changed": ["a"], "unchanged": 0, "problems": []}
    assert waiting["status"] == 200
    assert chat(gw, "a-new").status_code == 200  # the new version's alias
    assert chat(gw, "b").status_code == 404
    assert chat(gw, "c").status_code == 200
    assert set(states(gw)) == {"a", "c"}


def test_a_reload_with_a_broken_manifest_keeps_the_old_version_serving(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest(n, model_files[n]) for n in "ab"])
    assert chat(gw, "a").status_code == 200
    before = gw.model_state("a")
    broken = llama_manifest("a", model_files["a"], backend={"n_ctx": "lots"})
    (gw.settings.manifests / "a.yaml").write_text(yaml.safe_dump(broken))
    result = _reload(gw)
    assert result["changed"] == [] and result["removed"] == [] and result["unchanged"] == 2
    [problem] = result["problems"]
    assert problem["file"].endswith("a.yaml") and problem["field"] == "backend.n_ctx"
    after = gw.model_state("a")
    assert after["state"] == "ready" and after["loads"] == before["loads"]
    assert chat(gw, "a").status_code == 200
    assert gw.admin()["manifest_problems"] == result["problems"]


def test_a_reload_of_unchanged_manifests_touches_nothing(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest(n, model_files[n]) for n in "ab"])
    assert chat(gw, "a").status_code == 200
    slots = dict(gw.gateway.scheduler.slots)
    pools = {n: s.pool for n, s in slots.items()}
    assert _reload(gw) == {"added": [], "removed": [], "changed": [], "unchanged": 2, "problems": []}
    assert gw.gateway.scheduler.slots == slots  # the same objects: not rebuilt
    assert {n: s.pool for n, s in gw.gateway.scheduler.slots.items()} == pools
    assert states(gw) == {"a": "ready", "b": "unloaded"} and gw.model_state("a")["loads"] == 1


KEYS = {"admin_key": "adm-key", "api_keys": {"alice": "sk-alice", "bob": "sk-bob"}}


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("GET", "/v1/models", None, 401),
        ("GET", "/v1/models", "wrong", 401),
        ("GET", "/v1/models", "sk-alice", 200),
        ("GET", "/v1/models", "sk-bob", 200),
        ("GET", "/v1/models", "adm-key", 200),
        ("GET", "/admin/models", None, 401),
        ("GET", "/admin/models", "wrong", 401),
        ("GET", "/admin/models", "sk-alice", 403),
        ("GET", "/admin/models", "adm-key", 200),
        ("GET", "/admin/models/a/plan", "sk-bob", 403),
        ("POST", "/admin/reload", "sk-bob", 403),
        ("POST", "/admin/models/a/load", None, 401),
        ("GET", "/admin/models/a/logs", "adm-key", 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/health", None, 200),
    ],
)
def test_who_may_call_what(
    serve: Callable[..., RunningGateway],
    model_files: dict[str, Path],
    method: str,
    path: str,
    key: str | None,
    status: int,
) -> None:
    gw = serve([llama_manifest("a", model_files["a"])], **KEYS)
    answer = admin(gw, method, path, key)
    assert answer.status_code == status, answer.text
    if status in (401, 403):
        error = answer.json()["error"]
        assert error["type"] == ("authentication_error" if status == 401 else "permission_error")
        assert "sk-" not in answer.text and "adm-key" not in answer.text  # keys are never echoed


def test_streams_and_metrics_behind_keys(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"])], metrics_key="prom-key", **KEYS)
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="wrong").chat.completions.create(
            model="a", messages=[{"role": "user", "content": "x"}], stream=True
        )
    stream = gw.client(api_key="sk-alice").chat.completions.create(
        model="a", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=4
    )
    assert [c for c in stream]
    assert admin(gw, "GET", "/metrics").status_code == 401
    assert admin(gw, "GET", "/metrics", "sk-alice").status_code == 401
    assert admin(gw, "GET", "/metrics", "prom-key").status_code == 200
    assert admin(gw, "GET", "/metrics", "adm-key").status_code == 200


def test_idle_ttl_of_a_model_a_reload_added_or_changed(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    """A gateway started without any TTL: a reload adds a model with one and gives another one; both unload
    once idle that long, and a model without one stays."""
    gw = serve([llama_manifest(n, model_files[n]) for n in "ab"])
    directory = gw.settings.manifests
    assert chat(gw, "a").status_code == 200 and chat(gw, "b").status_code == 200
    (directory / "a.yaml").write_text(yaml.safe_dump(llama_manifest("a", model_files["a"], idle_ttl="1s")))
    (directory / "c.yaml").write_text(yaml.safe_dump(llama_manifest("c", model_files["c"], idle_ttl="1s")))
    assert admin(gw, "POST", "/admin/reload").json()["added"] == ["c"]
    assert chat(gw, "a").status_code == 200 and chat(gw, "c").status_code == 200
    assert states(gw)["a"] == "ready" and states(gw)["c"] == "ready"
    wait_for(lambda: states(gw)["a"] == states(gw)["c"] == "unloaded", "a and c to unload once idle")
    assert states(gw)["b"] == "ready"  # no TTL: it stays
    loads = {m["name"]: m["loads"] for m in gw.admin()["models"]}
    assert loads == {"a": 1, "b": 1, "c": 1}  # the new version of a loaded once, and was reaped
