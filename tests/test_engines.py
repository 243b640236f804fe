"""The devices the Docker engines add to the budget (``gateway.resources.hosts.devices``), and the instance
id."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.settings import EngineSettings, Settings
from gateway.resources import hosts as engines_module
from gateway.resources.hosts import devices, instance_id

GiB = 2**30


def engine(**fields: object) -> EngineSettings:
    return EngineSettings.model_validate(fields)


def test_each_engine_adds_its_ram_and_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines_module, "_nvml_gpus", lambda: [])
    inventory, budgets = devices(
        [
            engine(name="local", url="unix:///run/docker.sock"),
            engine(name="box", url="tcp://10.0.0.2:2376", memory="16GiB", gpus=["80GiB", "40GiB"]),
            engine(name="bare", url="ssh://llm@10.0.0.3"),
        ],
        8 * GiB,
    )
    assert [e.ram for e in inventory] == ["host", "box:ram", "bare:ram"]  # local RAM is the host budget
    assert inventory[1].gpus == ((0, "box:gpu0"), (1, "box:gpu1"))
    assert budgets == {
        "host": 8 * GiB,
        "box:ram": 16 * GiB,
        "box:gpu0": 80 * GiB,
        "box:gpu1": 40 * GiB,
        "bare:ram": 0,  # a remote engine's RAM must be given before CPU containers fit there
    }


def test_this_machines_gpus_are_one_budget_for_every_local_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker and podman on one host see the same GPUs: two engines must not budget them twice."""
    monkeypatch.setattr(engines_module, "_nvml_gpus", lambda: [24 * GiB])
    inventory, budgets = devices(
        [
            engine(name="docker", url="unix:///run/docker.sock"),
            engine(name="podman", url="unix:///run/p.sock"),
        ],
        8 * GiB,
    )
    assert [e.gpus for e in inventory] == [((0, "host:gpu0"),), ((0, "host:gpu0"),)]
    assert budgets == {"host": 8 * GiB, "host:gpu0": 24 * GiB}


def test_instance_id_is_stable_and_differs_between_gateways(tmp_path: Path) -> None:
    a = Settings(manifests=tmp_path, port=8080)
    assert instance_id(a) == instance_id(Settings(manifests=tmp_path, port=8080))
    assert instance_id(a) != instance_id(Settings(manifests=tmp_path, port=8081))
    assert instance_id(Settings(manifests=tmp_path, instance_id="prod-1")) == "prod-1"
