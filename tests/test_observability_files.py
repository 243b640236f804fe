"""The observability packaging, checked without Docker or network: compose.yaml against the Compose
Specification's JSON schema, prometheus.yml with promtool, the Grafana provisioning and both dashboards (every
metric they query is one the gateway exports, with labels it has), and the Prometheus test helper
(``tests/prom.py``) against a real Prometheus scraping a tiny static exporter.

``tests/schemas/compose-spec.json`` is the Compose Specification's schema, unchanged, from
github.com/compose-spec/compose-spec, schema/compose-spec.json at commit
170098ba07d9f53c383a41bfd4c5166b0a4529a6 (Apache-2.0). ``grafana/dashboards/vllm.json`` is vLLM's example
dashboard, unchanged (``grafana/README.md`` says from where).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from gateway.config.loading import load_directory
from tests.prom import PrometheusError, dashboard_exprs, running_prometheus, substitute

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROMTOOL = Path("/usr/bin/promtool")

VLLM_DASHBOARD_SHA256 = "651f1cf353024072197214df101a6f641839099736939b22b2f46b11c9faf527"
VLLM_DASHBOARD_CHARS = 41189
# The data source uid vLLM's dashboard was saved with (its DS_PROMETHEUS variable's current value).
VLLM_DATASOURCE_UID = "edx8memhpd9tsa"

# What the gateway's /metrics exports: name -> (type, labels). Histograms and counters by their base name as
# prometheus-client writes them (a counter's name ends in _total).
ML = ("model_name", "engine")
HISTOGRAMS_VLLM = (
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "request_time_per_output_token_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "request_inference_time_seconds",
    "request_prefill_time_seconds",
    "request_decode_time_seconds",
    "request_prompt_tokens",
    "request_generation_tokens",
    "request_max_num_generation_tokens",
    "request_params_n",
    "request_params_max_tokens",
)
EXPORTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "vllm:num_requests_running": ("gauge", ML),
    "vllm:num_requests_waiting": ("gauge", ML),
    "vllm:kv_cache_usage_perc": ("gauge", ML),
    "vllm:prompt_tokens_total": ("counter", ML),
    "vllm:generation_tokens_total": ("counter", ML),
    "vllm:request_success_total": ("counter", (*ML, "finished_reason")),
    "vllm:prefix_cache_queries_total": ("counter", ML),
    "vllm:prefix_cache_hits_total": ("counter", ML),
    **{f"vllm:{name}": ("histogram", ML) for name in HISTOGRAMS_VLLM},
    "gateway_model_state": ("gauge", ("model_name", "state")),
    "gateway_model_load_duration_seconds": ("histogram", ("model_name",)),
    "gateway_model_wait_seconds": ("histogram", ("model_name",)),
    "gateway_model_wait_past_bound_total": ("counter", ("model_name",)),
    "gateway_queue_wait_seconds": ("histogram", ("model_name", "priority", "key")),
    "gateway_model_loads_total": ("counter", ("model_name", "result")),
    "gateway_model_evictions_total": ("counter", ("model_name", "reason")),
    "gateway_memory_budget_bytes": ("gauge", ("device",)),
    "gateway_memory_used_bytes": ("gauge", ("device",)),
    "gateway_model_memory_estimated_bytes": ("gauge", ("model_name", "device")),
    "gateway_model_memory_measured_bytes": ("gauge", ("model_name", "device")),
    "gateway_replica_up": ("gauge", ML),
    "gateway_replica_out": ("gauge", (*ML, "reason")),
    "gateway_upstream_errors_total": ("counter", ("model_name", "kind")),
    "gateway_queue_rejections_total": ("counter", ("model_name",)),
    "gateway_requests_total": ("counter", ("model_name", "endpoint", "status")),
    "gateway_backend_requests_processing": ("gauge", ML),
    "gateway_backend_requests_deferred": ("gauge", ML),
}


def series_labels() -> dict[str, tuple[str, ...]]:
    """Every series name a scrape can show (histograms as _bucket, _sum, _count) and its labels."""
    names: dict[str, tuple[str, ...]] = {}
    for name, (kind, labels) in EXPORTED.items():
        if kind == "histogram":
            names[f"{name}_bucket"] = (*labels, "le")
            names[f"{name}_sum"] = labels
            names[f"{name}_count"] = labels
        else:
            names[name] = labels
    return names


METRIC = re.compile(r"(?<![\w:])((?:vllm:|gateway_)[A-Za-z0-9_:]*)")
SELECTOR = re.compile(r"((?:vllm:|gateway_)[A-Za-z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


def provisioned_datasources() -> list[dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    datasources: list[dict[str, Any]] = doc["datasources"]
    return datasources


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


# ------------------------------------------------------------------------------------------------ compose


def test_compose_matches_the_compose_specification_schema() -> None:
    schema = load_json(ROOT / "tests" / "schemas" / "compose-spec.json")
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            if source.startswith((".", "/", "~")):
                yield source, rest.split(":")[0]
        elif volume.get("type") == "bind":
            yield volume["source"], volume["target"]


def test_compose_bind_mounts_exist_and_the_build_has_its_dockerfile() -> None:
    services = compose()["services"]
    assert {"gateway", "prometheus", "grafana", "llamacpp"} <= set(services)
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            # manifests/models (the llamacpp service's GGUF) is made by `llm-gateway fetch-model`, which the
            # README's commands run before anything else.
            assert (ROOT / source).exists(), f"{name}: bind mount source {source} is not in the repository"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
    assert services["gateway"]["build"] == "."


def test_compose_wires_the_services_to_each_other() -> None:
    """Prometheus scrapes the gateway's service and port, Grafana reads the provisioning and dashboards from
    where the provider looks, and the gateway's remote manifest points at the llamacpp service."""
    services = compose()["services"]
    prometheus_config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    (job,) = prometheus_config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert prometheus_config["global"]["scrape_interval"] == "5s"
    # published on the host's loopback unless told otherwise; Grafana has no default password
    assert services["gateway"]["ports"] == ["${GATEWAY_PUBLISH:-127.0.0.1}:8000:8000"]
    assert services["prometheus"]["ports"] == ["${PROMETHEUS_PUBLISH:-127.0.0.1}:9090:9090"]
    assert services["grafana"]["ports"] == ["${GRAFANA_PUBLISH:-127.0.0.1}:3000:3000"]
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "gateway-state:/var/lib/llm-gateway" in services["gateway"]["volumes"]
    assert ("./prometheus.yml", "/etc/prometheus/prometheus.yml") in bind_mounts(services["prometheus"])

    grafana_mounts = dict(bind_mounts(services["grafana"]))
    provisioning = grafana_mounts["./grafana/provisioning"]
    assert provisioning == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())[
        "providers"
    ]
    assert grafana_mounts["./grafana/dashboards"] == provider["options"]["path"]
    (datasource,) = provisioned_datasources()
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"

    gateway_mounts = dict(bind_mounts(services["gateway"]))
    assert gateway_mounts["./manifests/compose/llamacpp-remote.yaml"].startswith("/app/manifests/")
    loaded = load_directory(ROOT / "manifests" / "compose")
    assert loaded.problems == []
    (remote,) = loaded.models
    assert remote.manifest.backend.kind == "remote"
    assert [e.url for e in remote.manifest.backend.endpoints] == ["http://llamacpp:8080"]
    llamacpp = services["llamacpp"]["command"]
    assert llamacpp[llamacpp.index("--port") + 1] == "8080" and "--metrics" in llamacpp
    model = llamacpp[llamacpp.index("-m") + 1]
    assert ("./manifests/models", "/models") in bind_mounts(services["llamacpp"])
    assert model.startswith("/models/")

    for name, service in services.items():
        assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy" and "healthcheck" in services[dependency]


def test_dockerfile_serves_on_the_published_port_with_the_bundled_model() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "RUN llm-gateway fetch-model" in text
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    assert json.loads(cmd.group(1)) == ["llm-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # pins are kept in a writable state directory the image declares as a volume, owned by its user
    assert "GATEWAY_STATE_FILE=/var/lib/llm-gateway/pins.json" in text
    assert re.search(r"^VOLUME /var/lib/llm-gateway$", text, re.M)
    assert "chown gateway /var/lib/llm-gateway" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


# --------------------------------------------------------------------------------------------- prometheus


def test_promtool_accepts_prometheus_yml() -> None:
    assert PROMTOOL.is_file(), "promtool is missing: apt-get install prometheus"
    done = subprocess.run(
        [str(PROMTOOL), "check", "config", str(ROOT / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------- grafana


def test_vllm_dashboard_is_vllms_own_unchanged() -> None:
    raw = (DASHBOARDS / "vllm.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == VLLM_DASHBOARD_SHA256
    assert len(raw.decode()) == VLLM_DASHBOARD_CHARS
    json.loads(raw)


def test_the_provisioned_datasource_is_the_one_the_dashboards_were_saved_with() -> None:
    (datasource,) = provisioned_datasources()
    assert datasource["uid"] == VLLM_DATASOURCE_UID and datasource["isDefault"] is True
    for name in ("vllm.json", "gateway.json"):
        dashboard = load_json(DASHBOARDS / name)
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        ds = variables["DS_PROMETHEUS"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        assert ds["current"]["value"] == datasource["uid"] and ds["current"]["text"] == datasource["name"]
        for panel, target in targets(dashboard):
            for where in (panel, target):
                if "datasource" in where:
                    uid = where["datasource"]["uid"]
                    assert uid in ("${DS_PROMETHEUS}", datasource["uid"]), panel["title"]
        assert variables["model_name"]["type"] == "query"


@pytest.mark.parametrize("name", ["vllm.json", "gateway.json"])
def test_every_dashboard_query_is_on_exported_series_and_labels(name: str) -> None:
    dashboard = load_json(DASHBOARDS / name)
    known = series_labels()
    count = 0
    for panel, target in targets(dashboard):
        expr = target.get("expr")
        assert isinstance(expr, str) and expr.strip(), f"{panel['title']}: a target without expr"
        count += 1
        metrics = METRIC.findall(expr)
        assert metrics, f"{panel['title']}: {expr!r} queries no gateway or vllm series"
        unknown = sorted(set(metrics) - set(known))
        assert unknown == [], f"{panel['title']}: {unknown} are not exported"
        labels_here = {label for m in metrics for label in known[m]}
        for metric, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in known[metric], f"{panel['title']}: {metric} has no label {label}"
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in grouping.split(","))):
                assert label in labels_here, f"{panel['title']}: grouping by {label!r} in {expr!r}"
    assert count >= 10


def test_gateway_dashboard_covers_the_issue_and_filters_by_model() -> None:
    dashboard = load_json(DASHBOARDS / "gateway.json")
    model = {v["name"]: v for v in dashboard["templating"]["list"]}["model_name"]
    assert model["query"]["query"] == "label_values(gateway_model_state, model_name)"
    assert model["multi"] is True and model["includeAll"] is True
    exprs = [target["expr"] for _, target in targets(dashboard)]
    joined = "\n".join(exprs)
    for metric in (
        'gateway_model_state{state="ready"}',
        "gateway_memory_used_bytes",
        "gateway_memory_budget_bytes",
        "gateway_model_memory_estimated_bytes",
        "gateway_model_memory_measured_bytes",
        "gateway_model_loads_total",
        "gateway_model_load_duration_seconds_bucket",
        "gateway_queue_wait_seconds_bucket",
        "gateway_model_wait_seconds_bucket",
        "gateway_model_evictions_total",
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "gateway_queue_rejections_total",
        "gateway_replica_up",
        "gateway_requests_total",
        "gateway_upstream_errors_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert metric in joined, metric
    # Every per-model query follows the model variable; only the all-models count of ready models does not.
    everything = 'sum(gateway_model_state{state="ready"})'
    per_model = [e for e in exprs if "model_name" in e and e != everything]
    assert per_model and all('model_name=~"$model_name"' in e for e in per_model)
    assert all("[$__rate_interval]" in e for e in exprs if "rate(" in e)
    # Panels do not overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, panel["title"]
        cells |= mine


# ------------------------------------------------------------------------------------------- tests/prom.py


def test_dashboard_exprs_substitutes_every_variable_form(tmp_path: Path) -> None:
    # PromQL's own "$1" and a regex's "$" are not Grafana variables.
    range_expr = 'increase(z[$__range]) / $__range_s + label_replace(w, "d", "$1", "e", "$")'
    dashboard = {
        "panels": [
            {"title": "flat", "targets": [{"expr": 'rate(x{model_name="$model_name"}[$__rate_interval])'}]},
            {
                "title": "row",
                "type": "row",
                "collapsed": True,
                "panels": [
                    {
                        "title": "nested",
                        "targets": [
                            {"expr": 'y{a="${model_name}", b="[[model_name]]", c="${model_name:regex}"}'},
                            {"expr": range_expr},
                            {"refId": "B"},
                        ],
                    }
                ],
            },
        ]
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard))
    assert dashboard_exprs(path, {"model_name": "m"}, rate_interval="2m", range_="10m") == [
        ("flat", 'rate(x{model_name="m"}[2m])'),
        ("nested", 'y{a="m", b="m", c="m"}'),
        ("nested", 'increase(z[10m]) / 600 + label_replace(w, "d", "$1", "e", "$")'),
    ]
    with pytest.raises(KeyError, match="model_name"):
        substitute('x{m="$model_name"}', {})


def test_both_dashboards_substitute_completely() -> None:
    for name in ("vllm.json", "gateway.json"):
        exprs = dashboard_exprs(DASHBOARDS / name, {"model_name": "smollm2"})
        assert exprs
        for title, expr in exprs:
            assert "$" not in expr.replace('"$1"', "") and "[[" not in expr, (title, expr)


METRICS_TEXT = b"""# HELP demo_requests_total Requests served.
# TYPE demo_requests_total counter
demo_requests_total{model_name="tiny"} 42
"""


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = (200, METRICS_TEXT) if self.path == "/metrics" else (404, b"")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_running_prometheus_scrapes_its_target(exporter: str, tmp_path: Path) -> None:
    with running_prometheus(exporter, tmp_path) as prom:
        (series,) = prom.wait_for('demo_requests_total{model_name="tiny"}', deadline=30)
        assert series["metric"]["instance"] == exporter
        assert float(series["value"][1]) == 42
        assert prom.query("up")[0]["value"][1] == "1"
        assert prom.query("nothing_here") == []
        assert float(prom.query("scalar(demo_requests_total)")[0]["value"][1]) == 42
        # Every dashboard query, substituted, is PromQL that Prometheus accepts (query() raises otherwise).
        for name in ("vllm.json", "gateway.json"):
            for _, expr in dashboard_exprs(DASHBOARDS / name, {"model_name": "tiny"}):
                prom.query(expr)
        with pytest.raises(PrometheusError, match="parse error"):
            prom.query("sum by (")
        process_log = prom.log
    assert process_log.is_file()
