"""Budgets that learn (issue 19, item 3), for real over HTTP: the real SmolLM2 loads in process and in a
launched llama-server, serves requests, and ``/admin/models`` and the plan show the footprint measured beside
the estimate and which one the budget uses; a gateway restarted on the same state file budgets with what the
first one learned."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.scheduling.learned import DEFAULT_MARGIN
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest
from tests.test_llama_server import binaries, server_manifest  # noqa: F401 (a fixture)

MiB = 1 << 20


def ask(gw: RunningGateway, model: str) -> None:
    for content in ("Hello", "Name three colours.", "Count to five."):
        r = gw.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=16
        )
        assert r.choices[0].message.content is not None


def budget(gw: RunningGateway, model: str) -> dict[str, Any]:
    b = gw.model_state(model)["budget"]
    assert b is not None
    return dict(b)


def plan(gw: RunningGateway, model: str) -> dict[str, Any]:
    return dict(httpx.get(f"{gw.base_url}/admin/models/{model}/plan", timeout=30).json())


def check_uses(b: dict[str, Any], margin: float) -> None:
    """The budget uses the learned peak plus the margin exactly when that is above the estimate."""
    with_margin = int(b["learned_bytes"] * (1 + margin))
    if with_margin > b["estimate_bytes"]:
        assert (b["uses"], b["budget_bytes"]) == ("learned", with_margin)
    else:
        assert (b["uses"], b["budget_bytes"]) == ("estimate", b["estimate_bytes"])


def learn_then_restart(
    serve: Callable[..., RunningGateway], manifest: dict[str, Any], state: Path, **settings: Any
) -> None:
    """Load and use ``manifest``'s model, then start a second gateway on the same state file with a margin
    so wide that the learned figure must be the one used."""
    name = manifest["name"]
    first = serve([manifest], state_file=state, **settings)
    before = budget(first, name)
    assert (before["learned_bytes"], before["uses"]) == (None, "estimate")
    assert before["budget_bytes"] == before["estimate_bytes"] > 0
    ask(first, name)
    learned = budget(first, name)
    assert learned["learned_bytes"] > 0
    check_uses(learned, DEFAULT_MARGIN)
    planned = plan(first, name)["budget"]  # a sample since the look above may have raised the peak
    assert planned["estimate_bytes"] == learned["estimate_bytes"]
    assert planned["learned_bytes"] >= learned["learned_bytes"]
    check_uses(planned, DEFAULT_MARGIN)
    first.__exit__()
    saved = json.loads((state.parent / "learned.json").read_text())["learned"]
    assert [e["model"] for e in saved.values()] == [name]
    [peak] = [e["peak_bytes"]["host"] for e in saved.values()]
    assert peak >= learned["learned_bytes"]  # a peak: a sample after the look above may have raised it

    second = serve([manifest], state_file=state, learned_margin=1.0, **settings)
    again = budget(second, name)
    assert again["learned_bytes"] == peak  # read back before any load
    assert (again["uses"], again["budget_bytes"]) == ("learned", peak * 2)
    assert plan(second, name)["budget"] == again
    assert second.model_state(name)["memory_bytes"] == again["budget_bytes"]  # what its load will claim
    before_load = plan(second, name)["memory_after"]
    host = next(d for d in before_load if d["device"] == "host")
    assert host["used_bytes"] == again["budget_bytes"]  # the plan places the learned figure
    ask(second, name)
    assert second.model_state(name)["memory_by_device"] == {"host": again["budget_bytes"]}


def test_an_in_process_model_learns_its_footprint_and_keeps_it_across_a_restart(
    serve: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    learn_then_restart(serve, llama_manifest("smol", SMOLLM2), tmp_path / "state" / "pins.json")


def test_a_llama_server_model_learns_its_processs_footprint(
    serve: Callable[..., RunningGateway],
    tmp_path: Path,
    binaries: dict[str, Path],  # noqa: F811
) -> None:
    learn_then_restart(
        serve,
        server_manifest("srv", SMOLLM2, n_ctx=512),
        tmp_path / "state" / "pins.json",
        llama_server=binaries["llama-server"],
    )


def test_a_footprint_over_the_figure_budgeted_is_logged_with_both(
    serve: Callable[..., RunningGateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A manifest that says 1 MiB: the real SmolLM2 takes far more, and the operator is told so (its figure
    # still wins: it is not second-guessed).
    with caplog.at_level(logging.WARNING, logger="gateway.observability.footprint"):
        gw = serve([llama_manifest("short", SMOLLM2, memory=str(MiB))], state_file=tmp_path / "pins.json")
        ask(gw, "short")
    b = budget(gw, "short")
    assert (b["estimate_bytes"], b["budget_bytes"], b["uses"]) == (MiB, MiB, "manifest")
    warned = [r.getMessage() for r in caplog.records if r.name == "gateway.observability.footprint"]
    assert len(warned) == 1  # once, when the peak first crossed: not at every sample
    took = re.fullmatch(
        r"short: took ([0-9.]+) MiB, over its manifest's memory of 1\.0 MiB by more than 4%; "
        r"its next loads are budgeted with 1\.0 MiB \(manifest\)",
        warned[0],
    )
    assert took is not None
    assert 1.0 < float(took[1]) <= b["learned_bytes"] / MiB + 0.05  # the peak then; it may rise later
