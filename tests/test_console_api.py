"""What the web console stands on, without a browser: the files at /ui and their headers, who may read and act
(the admin key, the read-only setting, other origins), the activity of the last requests and the charts'
series. The console itself, in a real browser, is tests/test_console.py."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.usage import Usage
from gateway.http.console import CSP, same_origin
from gateway.observability.activity import Activity, Series, decode_rate
from gateway.observability.metrics import Metrics, Trace
from tests.conftest import EOS, RunningGateway, llama_manifest, wait_for
from tests.fake_upstream import RunningUpstream
from tests.test_openapi import schema_validator

ADMIN = "admin-secret"
ALICE = "sk-alice-secret"
KEYS = {"admin_key": ADMIN, "api_keys": {"alice": ALICE}}
MiB = 2**20
LONG = {"max_tokens": 100_000, "logit_bias": {EOS: -100}}


def remote(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "backend": {"kind": "remote", "endpoints": [{"url": url}]},
        "health_check_interval": 0,
    }


def get(gw: RunningGateway, path: str, key: str | None = None, **headers: str) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.get(f"{gw.base_url}{path}", headers=headers, timeout=30)


def post(gw: RunningGateway, path: str, key: str | None = None, **headers: str) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{gw.base_url}{path}", headers=headers, timeout=30)


def chat(gw: RunningGateway, model: str, key: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], **extra}
    return httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


# -- the files -----------------------------------------------------------------------------------------------
def test_ui_is_served_from_the_package_with_a_strict_policy_and_no_key(
    serve: Callable[..., RunningGateway], healthy: RunningUpstream
) -> None:
    gw = serve([remote("m", healthy.url)], **KEYS)
    page = get(gw, "/ui")  # no key: the page holds no secret; what it shows comes from /admin, with the key
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "access-control-allow-origin" not in page.headers
    html = page.text
    assert '<script src="/ui/app.js" defer></script>' in html
    assert (
        "<script>" not in html and "style=" not in html and "http://" not in html and "https://" not in html
    )
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = get(gw, f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"] == CSP
        assert "localStorage" not in r.text  # the key is kept for the tab only (sessionStorage)
    assert get(gw, "/ui/../gateway/http/app.py").status_code == 404
    assert get(gw, "/ui/secrets.json").status_code == 404


def test_ui_files_carry_an_etag_and_come_gzipped_when_asked(
    serve: Callable[..., RunningGateway], healthy: RunningUpstream
) -> None:
    gw = serve([remote("m", healthy.url)])
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        plain = client.get("/ui/app.js", headers={"accept-encoding": "identity"})
        zipped = client.get("/ui/app.js", headers={"accept-encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "accept-encoding"
        assert int(zipped.headers["content-length"]) < len(plain.content) / 2
        assert zipped.content == plain.content  # httpx decoded it
        again = client.get("/ui/app.js", headers={"if-none-match": plain.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert plain.headers["cache-control"] == "no-cache"  # revalidated, so a new version shows at once
    total = sum(len(gzip.compress(get(gw, f"/ui/{f}").content)) for f in ("", "app.js", "app.css"))
    assert total < 200_000  # the bound on a page's transfer, with room for the JSON it then fetches


# -- who may read and act ------------------------------------------------------------------------------------
def test_admin_needs_the_admin_key_unless_read_only_is_enabled(
    serve: Callable[..., RunningGateway], healthy: RunningUpstream
) -> None:
    strict = serve([remote("m", healthy.url)], **KEYS)
    assert get(strict, "/admin/models").status_code == 401
    assert get(strict, "/admin/session").status_code == 401
    assert get(strict, "/admin/session", ALICE).status_code == 403  # an API key is not the admin key
    assert get(strict, "/admin/session", ADMIN).json() == {"key": "admin", "actions": True}
    schema_validator("Session").validate(get(strict, "/admin/session", ADMIN).json())

    relaxed = serve([remote("m", healthy.url)], console_read_only=True, **KEYS)
    assert get(relaxed, "/admin/session").json() == {"key": None, "actions": False}
    for path in (
        "/admin/models",
        "/admin/devices",
        "/admin/activity",
        "/admin/series",
        "/admin/models/m/plan",
    ):
        assert get(relaxed, path).status_code == 200, path
    assert post(relaxed, "/admin/models/m/load").status_code == 401  # acting still needs the key
    assert post(relaxed, "/admin/reload").status_code == 401
    assert get(relaxed, "/admin/models", "wrong").status_code == 401  # a wrong key is never read-only
    assert post(relaxed, "/admin/models/m/load", ADMIN).json()["state"] == "ready"
    assert get(relaxed, "/v1/models").status_code == 401  # /v1 is untouched by the setting

    open_ = serve([remote("m", healthy.url)])  # no key at all: /admin is open, as it always was
    assert get(open_, "/admin/session").json() == {"key": None, "actions": True}


def test_another_origin_cannot_act_through_a_browser(
    serve: Callable[..., RunningGateway], healthy: RunningUpstream
) -> None:
    gw = serve([remote("m", healthy.url)])  # no key: the case where a foreign page could act
    host = gw.base_url.removeprefix("http://")
    foreign = post(gw, "/admin/models/m/load", origin="http://evil.example")
    assert foreign.status_code == 403 and "another origin" in foreign.json()["error"]["message"]
    assert post(gw, "/admin/models/m/load", origin="null").status_code == 403
    assert post(gw, "/admin/models/m/load", **{"sec-fetch-site": "cross-site"}).status_code == 403
    assert post(gw, "/admin/reload", origin=f"http://{host}.evil.example").status_code == 403
    assert gw.model_state("m")["state"] == "unloaded"
    assert post(gw, "/admin/models/m/load", origin=f"http://{host}").status_code == 200  # the console itself
    assert post(gw, "/admin/models/m/unload").status_code == 200  # curl, the CLI: no Origin
    # nothing is shared with other origins: no CORS headers, and a preflight is not answered with one
    reads = get(gw, "/admin/models", origin="http://evil.example")
    assert reads.status_code == 200 and "access-control-allow-origin" not in reads.headers
    preflight = httpx.options(
        f"{gw.base_url}/admin/models/m/load",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://Gateway.local", "gateway.local:80", True),
        ("https://gw.example", "gw.example", True),
        ("https://gw.example", "gw.example:443", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("https://gw.example", "gw.example:80", False),
        ("http://gw.example.evil", "gw.example", False),
        ("null", "gw.example", False),
        ("file://", "gw.example", False),
        ("http://gw.example", "", False),
    ],
)
def test_same_origin(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same


# -- activity and series -------------------------------------------------------------------------------------
def test_activity_keeps_the_last_requests_with_key_names_tokens_and_timings(
    serve: Callable[..., RunningGateway], healthy: RunningUpstream
) -> None:
    gw = serve([remote("m", healthy.url)], activity_size=3, **KEYS)
    assert chat(gw, "m", ALICE).status_code == 200
    assert chat(gw, "m", ALICE, stream=True).status_code == 200
    assert chat(gw, "nope", ALICE).status_code == 404
    assert chat(gw, "m", ADMIN).status_code == 200
    answer = get(gw, "/admin/activity", ADMIN)
    assert ALICE not in answer.text and ADMIN not in answer.text  # names, never keys
    body = answer.json()
    schema_validator("ActivityList").validate(body)  # as /openapi.json says
    assert body["size"] == 3
    entries = body["entries"]
    assert len(entries) == 3  # bounded: the first request is gone
    by_status = {e["status"]: e for e in entries}
    assert by_status[404]["key"] == "alice" and by_status[404]["prompt_tokens"] is None
    done = [e for e in entries if e["status"] == 200]
    assert {e["key"] for e in done} == {"alice", "admin"}
    streamed = next(e for e in done if e["key"] == "alice")
    assert streamed["model"] == "m" and streamed["endpoint"] == "chat/completions"
    assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == (1, 64)  # the fake's usage event
    assert streamed["ttft_seconds"] > 0 and streamed["tokens_per_second"] > 0
    plain = next(e for e in done if e["key"] == "admin")
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (1, 1)
    last = max(e["id"] for e in entries)
    assert get(gw, f"/admin/activity?since={last}", ADMIN).json()["entries"] == []
    assert [e["id"] for e in get(gw, "/admin/activity?limit=1", ADMIN).json()["entries"]] == [last]
    assert get(gw, "/admin/activity?since=-1", ADMIN).status_code == 400


def test_series_samples_tokens_per_second_queue_and_memory(
    serve: Callable[..., RunningGateway], healthy: RunningUpstream
) -> None:
    gw = serve([remote("m", healthy.url)], **KEYS)
    assert chat(gw, "m", ALICE, stream=True).status_code == 200

    def sampled() -> dict[str, Any] | None:
        data: dict[str, Any] = get(gw, "/admin/series", ADMIN).json()
        return data if "m" in data["models"] and len(data["time"]) >= 2 else None

    data = wait_for(sampled, "two samples of the series (one each 2 s)", deadline=20)
    schema_validator("Series").validate(data)
    column = data["models"]["m"]
    assert len(column["tokens_per_second"]) == len(data["time"]) == len(data["devices"]["host"]["used_bytes"])
    assert set(column) == {"tokens_per_second", "queued", "in_flight"}
    later = get(gw, f"/admin/series?since={data['time'][-1]}", ADMIN).json()
    assert all(t > data["time"][-1] for t in later["time"])
    assert get(gw, "/admin/series?since=soon", ADMIN).status_code == 400


def test_devices_name_their_holders_and_what_a_load_under_way_reserves(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve(
        [llama_manifest(n, model_files[n], memory=f"{100 * MiB}", backend={"n_ctx": 65536}) for n in "ab"],
        memory_budget=150 * MiB,
        drain_grace=3600,
        swap_policy="fifo",  # swap at once, rather than let a serve a while first
    )
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True, **LONG}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):  # keep-alives while a loads, then its tokens
            pass  # a streams now, and will not finish on its own
        loading = threading.Thread(target=lambda: post(gw, "/admin/models/b/load"))
        loading.start()  # b must evict a: a drains, and the memory it frees is kept for b

        def reserved() -> dict[str, Any] | None:
            (device,) = get(gw, "/admin/devices").json()["devices"]
            return device if device["reserved_bytes"] else None

        device = wait_for(reserved, "b's reservation")
        schema_validator("Device").validate(device)
        assert device["reserved_bytes"] == 100 * MiB and device["used_bytes"] == 200 * MiB
        assert device["models"] == [
            {"model": "a", "state": "draining", "bytes": 100 * MiB},
            {"model": "b", "state": "reserved", "bytes": 100 * MiB},
        ]
        assert post(gw, "/admin/models/a/unload?force=true").status_code == 200
        loading.join(60)
    (device,) = get(gw, "/admin/devices").json()["devices"]
    assert device["reserved_bytes"] == 0
    assert device["models"] == [{"model": "b", "state": "ready", "bytes": 100 * MiB}]


def trace(model: str = "m", **fields: Any) -> Trace:
    t = Trace(model, "chat/completions", arrived=100.0)
    for name, value in fields.items():
        setattr(t, name, value)
    return t


def test_activity_is_fed_by_the_metrics_batch_and_bounded() -> None:
    activity = Activity(2, clock=lambda: 1000.0)
    m = Metrics(["m"], activity=activity)
    done: dict[str, Any] = {"status": 200, "engine": "0", "completed": True}
    streamed = trace(scheduled=100.5, first=101.0, key="alice", usage=Usage(10, 21), gaps=[0.1] * 20, **done)
    body = b'{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":8}}'
    whole = trace(scheduled=100.0, first=103.0, body=body, **done)
    m.finished(streamed, 103.0)
    m.finished(whole, 104.0)
    assert list(activity) == []  # recorded with the batch, not on the request path
    m.flush()
    first, second = activity.since()
    assert first.key == "alice" and first.ttft == 1.0 and first.tokens_per_second == pytest.approx(10.0)
    assert (second.prompt_tokens, second.completion_tokens) == (4, 8)
    assert second.tokens_per_second == pytest.approx(2.0)  # a whole answer: over the time after scheduling
    refused = trace(status=429, key="bob")  # no engine: refused before a replica had it
    m.finished(refused, 100.01)
    m.flush()
    assert [e.status for e in activity] == [200, 429]  # the oldest went
    assert json.loads(json.dumps(activity.since(limit=1)[0].as_json()))["key"] == "bob"
    assert Activity(0).since() == []


def test_decode_rate() -> None:
    assert decode_rate(0, True, 1.0, 0.0, 2.0) is None
    assert decode_rate(11, True, 1.0, 0.0, 2.0) == pytest.approx(10.0)
    assert decode_rate(10, False, 1.9, 0.0, 2.0) == pytest.approx(5.0)
    assert decode_rate(1, True, 1.0, 0.0, 2.0) == pytest.approx(0.5)


def test_series_rates_and_bounds() -> None:
    series = Series(points=3, interval=1.0)
    series.sample(10.0, {"m": 0.0}, {"m": (0, 0)}, {"host": 5})
    series.sample(12.0, {"m": 40.0}, {"m": (2, 1)}, {"host": 7})
    series.sample(13.0, {"m": 40.0, "n": 9.0}, {"m": (0, 0), "n": (0, 1)}, {"host": 9})
    series.sample(14.0, {"m": 50.0, "n": 9.0}, {"m": (0, 0)}, {"host": 9})
    data = series.as_json()
    assert data["time"] == [12.0, 13.0, 14.0]
    assert data["models"]["m"] == {
        "tokens_per_second": [20.0, 0.0, 10.0],
        "queued": [2, 0, 0],
        "in_flight": [1, 0, 0],
    }
    assert data["models"]["n"]["tokens_per_second"] == [None, 0.0, None]  # new, then gone
    assert data["devices"]["host"]["used_bytes"] == [7, 9, 9]
    assert series.as_json(after=13.0)["time"] == [14.0]
