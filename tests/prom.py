"""A real Prometheus for tests, and the PromQL of Grafana dashboards with their variables substituted.

``running_prometheus(target, tmp_path)`` starts Debian's ``/usr/bin/prometheus`` on a free local port,
scraping ``target`` (``host:port``, path ``/metrics``) every second, and yields a ``Prom`` once the target has
been scraped successfully; it stops the server on exit. ``Prom.query`` runs an instant query through the HTTP
API; ``Prom.wait_for`` polls one until it returns something.

``dashboard_exprs(path, variables)`` lists ``(panel title, expr)`` for every query of every panel of a
dashboard (panels inside collapsed rows too), with Grafana's variables replaced the way Grafana would:
``$name``, ``${name}``, ``${name:format}``, ``[[name]]`` from ``variables``, and the built-in
``$__rate_interval``, ``$__interval``, ``$__range`` (and their ``_ms``/``_s`` forms) from the windows given.
A variable that is not given raises ``KeyError``: a dashboard query must not reach Prometheus half done.

Not a test module (no ``test_`` prefix): the observability tests import it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROMETHEUS = Path("/usr/bin/prometheus")


class PrometheusError(RuntimeError):
    """Prometheus did not start, did not scrape its target in time, or refused a query."""


@dataclass
class Prom:
    """A running Prometheus: its base URL and an HTTP client for its API."""

    url: str
    log: Path
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query: for a vector, one ``{"metric": {...}, "value": [t, "v"]}`` per
        series (empty when nothing matched); a scalar or string result comes as one such item with no labels.
        A query Prometheus rejects raises ``PrometheusError`` with its message."""
        response = self.client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        assert isinstance(result, list)
        return result

    def wait_for(self, expr: str, deadline: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until its result is not empty, for at most ``deadline`` seconds; return it."""
        end = time.monotonic() + deadline
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > end:
                raise PrometheusError(f"no data for {expr!r} within {deadline:.0f}s")
            time.sleep(0.25)

    def targets(self) -> list[dict[str, Any]]:
        response = self.client.get(f"{self.url}/api/v1/targets")
        response.raise_for_status()
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(target: str, interval: str) -> str:
    # JSON is YAML: no quoting surprises for the target.
    return json.dumps(
        {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {"job_name": "target", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
            ],
        },
        indent=2,
    )


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


@contextlib.contextmanager
def running_prometheus(
    target: str, tmp_path: Path, *, interval: str = "1s", timeout: float = 60.0
) -> Iterator[Prom]:
    """A Prometheus scraping ``target`` every ``interval``, ready and with the target up; stopped on exit.

    Its config, data and log live in ``tmp_path / "prometheus"``. Raises ``PrometheusError`` (with the end of
    its log) when it exits early or when ``timeout`` seconds pass before the target has been scraped."""
    if not PROMETHEUS.is_file():
        raise PrometheusError(f"{PROMETHEUS} not found: apt-get install prometheus")
    home = tmp_path / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(_config(target, interval))
    log = home / "prometheus.log"
    port = _free_port()
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    prom = Prom(url=f"http://127.0.0.1:{port}", log=log)
    try:
        _wait_ready(prom, process, target, time.monotonic() + timeout)
        yield prom
    finally:
        prom.client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(prom: Prom, process: subprocess.Popen[bytes], target: str, end: float) -> None:
    """Until /-/ready answers 200, then until ``target`` is up (scraped at least once, successfully)."""
    ready = False
    last = "not ready"
    while True:
        if process.poll() is not None:
            raise PrometheusError(f"prometheus exited with {process.returncode}:\n{_tail(prom.log)}")
        try:
            if not ready:
                ready = prom.client.get(f"{prom.url}/-/ready").status_code == 200
                last = "not ready"
            if ready:
                states = {t["scrapeUrl"]: (t["health"], t["lastError"]) for t in prom.targets()}
                if any(health == "up" for health, _ in states.values()):
                    return
                last = f"target {target}: {states or 'not listed yet'}"
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > end:
            raise PrometheusError(f"prometheus not ready or {target} not scraped: {last}\n{_tail(prom.log)}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- dashboards

# ${name} or ${name:format}, [[name]] or [[name:format]], $name (a name starts with a letter or _, so that
# PromQL's "$1" in label_replace and a "$" ending a regex are left alone).
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def _seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)(ms|s|m|h|d|w|y))+", duration)
    if parts is None:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def builtin_variables(rate_interval: str, interval: str, range_: str) -> dict[str, str]:
    """Grafana's built-in time variables for the given windows (Prometheus durations such as "1m")."""
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_}
    seconds = {name: _seconds(value) for name, value in values.items()}
    return {
        **values,
        "__rate_interval_ms": str(int(seconds["__rate_interval"] * 1000)),
        "__interval_ms": str(int(seconds["__interval"] * 1000)),
        "__range_s": str(int(seconds["__range"])),
        "__range_ms": str(int(seconds["__range"] * 1000)),
    }


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with every Grafana variable replaced from ``values``; a missing one raises ``KeyError``."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name not in values:
            raise KeyError(f"dashboard variable ${name} has no value (in {expr!r})")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_exprs(
    path: Path | str,
    variables: dict[str, str],
    *,
    rate_interval: str = "1m",
    interval: str = "15s",
    range_: str = "5m",
) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target with an ``expr`` of every panel, in dashboard order, with the
    dashboard's variables taken from ``variables`` (e.g. ``{"model_name": "smollm2"}``) and the built-in
    ``$__rate_interval``, ``$__interval`` and ``$__range`` from the windows given."""
    dashboard = json.loads(Path(path).read_text())
    values = {**builtin_variables(rate_interval, interval, range_), **variables}
    found: list[tuple[str, str]] = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((str(panel.get("title", "")), substitute(target["expr"], values)))
    return found
