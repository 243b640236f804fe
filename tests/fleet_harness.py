"""Gateways in cluster mode as real processes (so ``kill -9`` is real), over a real etcd cluster
(``tests.etcd_cluster``): for tests/test_fleet.py, bench/failover.py and bench/cluster_overhead.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, free_port, wait_for


@dataclass
class GatewayProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=30).json()

    def cluster(self) -> dict[str, Any]:
        return dict(self.get("/admin/cluster"))

    def model(self, name: str) -> dict[str, Any]:
        return dict(self.get(f"/admin/models/{name}"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@dataclass
class Fleet:
    """Gateways of one cluster (a name of the test's own), sharing one manifest directory."""

    etcd: str
    manifests: Path
    work: Path
    engines: list[dict[str, Any]] = field(default_factory=list)
    ttl: float = 3.0
    cluster: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    gateways: list[GatewayProcess] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The instance label of this fleet's containers."""
        return f"fleet-{self.cluster}"

    def start(self, name: str, port: int | None = None, manifests: Path | None = None) -> GatewayProcess:
        """``manifests``: a directory of its own (default: the fleet's)."""
        port = port or free_port()
        state = self.work / name
        state.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GATEWAY_CLUSTER_ETCD": self.etcd,
            "GATEWAY_CLUSTER_NAME": self.cluster,
            "GATEWAY_CLUSTER_TTL": str(self.ttl),
            "GATEWAY_CLUSTER_MEMBER": name,
            "GATEWAY_STATE_FILE": str(state / "pins.json"),
            "GATEWAY_MEMORY_BUDGET": "4GiB",
            "GATEWAY_ENGINES": json.dumps(self.engines),
            "GATEWAY_DRAIN_GRACE": "5",
            "GATEWAY_LOAD_TIMEOUT": "120",
            "GATEWAY_ENGINE_SCRAPE_INTERVAL": "0.5",
            **self.extra_env,
        }
        log = state / "gateway.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve",
                 "--manifests", str(manifests or self.manifests), "--port", str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        gw = GatewayProcess(name, port, proc, log)

        def up() -> bool:
            if not gw.alive():
                raise AssertionError(f"gateway {name} exited: {log.read_text()[-3000:]}")
            try:
                return httpx.get(gw.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, f"gateway {name}", deadline=60)
        self.gateways = [g for g in self.gateways if g.name != name] + [gw]
        return gw

    def by_name(self, name: str) -> GatewayProcess:
        return next(g for g in self.gateways if g.name == name)

    def leader(self) -> GatewayProcess:
        """The gateway every live one names as the leader (waits until they agree)."""

        def agreed() -> GatewayProcess | None:
            live = [g for g in self.gateways if g.alive()]
            views = {g.name: g.cluster() for g in live}
            leaders = {v["leader"] for v in views.values()}
            if len(leaders) != 1:
                return None
            lead = next(iter(leaders))
            chosen = next((g for g in live if g.name == lead), None)
            return chosen if chosen is not None and views[lead]["role"] == "leader" else None

        found: GatewayProcess = wait_for(agreed, "the gateways to agree on a leader", deadline=60)
        return found

    def stop(self) -> None:
        """Followers first, the leader last: a leader's shutdown removes the containers it runs."""
        live = [g for g in self.gateways if g.alive()]
        roles = {}
        for g in live:
            try:
                roles[g.name] = g.cluster().get("role")
            except httpx.HTTPError:
                roles[g.name] = "follower"
        for g in sorted(live, key=lambda g: roles[g.name] == "leader"):
            g.proc.send_signal(signal.SIGTERM)
            try:
                g.proc.wait(60)
            except subprocess.TimeoutExpired:
                g.kill()
