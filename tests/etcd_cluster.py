"""A real etcd cluster on loopback for the fleet's tests and benches: three members (Debian's etcd-server,
tests/services/install.sh), free ports, a data directory each; the leader found and killed through the
members' own HTTP status; stopped with SIGKILL after a grace (a member without quorum may ignore SIGTERM)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for


@dataclass
class Member:
    name: str
    client: int
    peer: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client}"

    def healthy(self) -> bool:
        try:
            r = httpx.get(f"http://{self.endpoint}/health", timeout=1)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and json.loads(r.text).get("health") == "true"


@dataclass
class EtcdCluster:
    size: int = 3
    members: list[Member] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-etcd-")))

    def __post_init__(self) -> None:
        for i in range(self.size):
            self.members.append(Member(f"m{i}", free_port(), free_port(), self.root / f"m{i}"))

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def _start(self, m: Member, state: str) -> None:
        initial = ",".join(f"{o.name}=http://127.0.0.1:{o.peer}" for o in self.members)
        log = (self.root / f"{m.name}.log").open("ab")
        m.proc = subprocess.Popen(
            ["etcd", "--name", m.name, "--data-dir", str(m.data),
             "--listen-client-urls", f"http://127.0.0.1:{m.client}",
             "--advertise-client-urls", f"http://127.0.0.1:{m.client}",
             "--listen-peer-urls", f"http://127.0.0.1:{m.peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer}",
             "--initial-cluster", initial, "--initial-cluster-state", state,
             "--initial-cluster-token", self.root.name,
             "--heartbeat-interval", "100", "--election-timeout", "1000"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()

    def start(self) -> EtcdCluster:
        for m in self.members:
            self._start(m, "new")
        wait_for(lambda: all(m.healthy() for m in self.members), "the etcd cluster", deadline=60)
        return self

    def leader(self) -> Member:
        """The member that leads the etcd cluster now (each member's status names the leader's id)."""

        def find() -> Member | None:
            ids = {}
            lead = None
            for m in self.members:
                if m.proc is None or m.proc.poll() is not None:
                    continue
                try:
                    r = httpx.post(f"http://{m.endpoint}/v3/maintenance/status", json={}, timeout=2).json()
                except httpx.HTTPError:
                    continue
                ids[int(r["header"]["member_id"])] = m
                lead = int(r.get("leader", 0)) or lead
            return ids.get(lead) if lead is not None else None

        found: Member = wait_for(find, "an etcd leader", deadline=30)
        return found

    def kill(self, m: Member) -> None:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(30)
        m.proc = None

    def restart(self, m: Member) -> None:
        self._start(m, "existing")

    def stop_all(self) -> list[Member]:
        """Kill every member (the store is down); returns them, for ``start_again``."""
        stopped = [m for m in self.members if m.proc is not None]
        for m in stopped:
            self.kill(m)
        return stopped

    def start_again(self, members: list[Member]) -> None:
        for m in members:
            self._start(m, "existing")
        wait_for(lambda: all(m.healthy() for m in members), "the etcd cluster back", deadline=60)

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(5)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait(10)
                m.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
